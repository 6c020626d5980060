// The wgmma (sm_90a) lightning-indexer kernels behind indexer_scores_bf16 / indexer_scores_fp8
// (dsa_bf16.h): same parameters, same results up to f32 summation order. Private to
// src/backend/cuda; the public entry points pick them (or the mma.sync kernels) by
// IndexerBf16Params::variant / IndexerFp8Params::variant. Arguments are checked by the callers.
#pragma once

#include "backend/cuda/dsa_bf16.h"

namespace indexcache::cuda {

// True when the wgmma kernels handle the shape: head_dim 128 and 16, 32, 64 or 128 heads.
bool indexer_wgmma_shape(int heads, int head_dim);
// True when the default (variant 0) takes the wgmma kernel: a supported shape and at least 64 query
// tokens. A block serves 256 / heads queries, so a few decode queries leave most of its MMA columns
// empty: measured on the H200 (T=1, 204800 keys, 32 heads) the wgmma kernel took 0.047 ms against
// the mma.sync kernel's 0.027 ms (bf16), 0.038 against 0.031 ms (e4m3).
bool indexer_wgmma_preferred(int heads, int head_dim, int tokens);
void indexer_scores_bf16_wgmma(const IndexerBf16Params& p, void* stream);
void indexer_scores_fp8_wgmma(const IndexerFp8Params& p, void* stream);

}  // namespace indexcache::cuda
