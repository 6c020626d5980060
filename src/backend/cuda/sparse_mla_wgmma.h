// Internal to src/backend/cuda: the Hopper warpgroup-MMA (wgmma, sm_90a) path of sparse_mla_bf16 for
// prefill (one split of the selected set, any head count 1..128 in groups of 64, the last one padded,
// dim_k 576, dim_v 512). No CUDA types here; sparse_mla.cu decides when it applies and calls it after
// validating the arguments.
#pragma once

#include "backend/cuda/dsa_bf16.h"

namespace indexcache::cuda {

// True when the wgmma kernel can run `p` with `splits` splits of the selected set (splits == 1,
// 1 <= heads <= 128, the DSA dims). The caller has already validated the rest of `p`.
bool sparse_mla_wgmma_applies(const SparseMlaParams& p, int splits);

// Runs the wgmma kernel on `stream` (a cudaStream_t). Precondition: sparse_mla_wgmma_applies(p, 1)
// and p validated by sparse_mla_bf16 (pointers non-null and 16-byte aligned, kv_stride % 8 == 0).
void sparse_mla_wgmma_bf16(const SparseMlaParams& p, void* stream);

}  // namespace indexcache::cuda
