// CUDA implementations of the DSA ops (lightning-indexer scores, row-wise top-k, sparse attention)
// as standalone functions. The header carries no CUDA types so plain C++ can include it.
//
// Every pointer inside the param structs is a DEVICE pointer; the functions only enqueue work on
// `stream` (a cudaStream_t passed as void*, nullptr = the legacy default stream) and return at once.
// Launch or argument errors throw indexcache::Error (ErrorKind::kRuntime) via throw_runtime.
// Semantics match the CPU ops of src/backend/cpu/kernels.h (see backend/backend.h):
//  - indexer_scores: same values up to f32 rounding (different summation order).
//  - topk: exactly the same indices in the same order (ties broken towards the lower index).
//  - sparse_attention: same values up to f32 rounding.
#pragma once

#include "backend/kernel_params.h"

namespace indexcache::cuda {

// True when the CUDA runtime loads and reports at least one device.
bool cuda_available();

// Limits of this slice (checked; violating them throws):
//   indexer_scores: head_dim <= 256.
//   topk: k <= 2048 (any number of candidates per row up to INT32_MAX).
//   sparse_attention: head_dim_k, head_dim_v <= 1024, heads % kv_heads == 0.
void indexer_scores(const IndexerScoreParams& p, void* stream = nullptr);
void topk(const TopkParams& p, void* stream = nullptr);
void sparse_attention(const SparseAttentionParams& p, void* stream = nullptr);

constexpr int kMaxTopk = 2048;

}  // namespace indexcache::cuda
