// CPU implementations of the backend ops (multithreaded with OpenMP; projections via OpenBLAS),
// compiled for each x86-64 level and chosen at run time (simd_dispatch.h).
#pragma once

#include "backend/kernel_params.h"

namespace indexcache::cpu {

void linear(const LinearParams& p);
void norm(const NormParams& p);
void rope(const RopeParams& p);
void indexer_scores(const IndexerScoreParams& p);
void topk(const TopkParams& p);
void sparse_attention(const SparseAttentionParams& p);
void silu_mul(const float* gate, const float* up, float* y, int64_t n);

}  // namespace indexcache::cpu
