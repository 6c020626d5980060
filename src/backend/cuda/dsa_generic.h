// Generic-shape bf16 DSA kernels on CUDA cores: the fallbacks the GPU model runner uses when a
// checkpoint's dims are not the production DSA shapes the tensor-core kernels of dsa_bf16.h require
// (index_head_dim 128 with heads % 8 == 0; kv_lora_rank 512 + rope 64), e.g. the small golden and
// embedded models. Same semantics as the tensor-core kernels and the CPU reference kernels; simple
// and exact in f32 accumulation rather than fast. No CUDA types here.
//
// Every pointer is a DEVICE pointer; bf16 tensors are `const void*` / `void*` holding IEEE bfloat16.
// Functions only enqueue work on `stream` (cudaStream_t as void*) and never allocate or synchronise,
// so they may be captured into CUDA graphs. Argument errors throw indexcache::Error (kRuntime).
#pragma once

#include <cstddef>
#include <cstdint>

#include "backend/cuda/dsa_bf16.h"

namespace indexcache::cuda {

// Lightning-indexer scores, any heads / head_dim, with the parameters (and semantics) of
// indexer_scores_bf16: scores[t, s] = scale * sum_h w[t, h] * relu(q[t, h, :] . k[s, :]) for
// s <= positions[t], -inf for positions[t] < s < keys.
// Limits: heads * (head_dim + 1) * 4 bytes <= 48 KiB (one query in shared memory).
void indexer_scores_generic(const IndexerBf16Params& p, void* stream = nullptr);

// Sparse MLA attention in absorbed form, any dim_k / dim_v (dim_v <= dim_k <= kv_stride), with the
// parameters (and semantics) of sparse_mla_bf16; num_splits, workspace and variant are not used.
// Limits: (dim_k + 2 * num_selected) * 4 bytes <= 48 KiB.
void sparse_mla_generic(const SparseMlaParams& p, void* stream = nullptr);

// Plain strided-batched GEMM for the shapes cuBLASLt rejects (leading dims or strides that are not
// multiples of 8 bf16 elements): for b < batch,
//   y_b[m, n] = alpha * sum_k x_b[m, k] * w_b[n, k] (+ beta * y_b[m, n]; beta == 0: y not read),
// x_b = x + b * x_batch_stride (bf16, rows ldx apart), w_b likewise (bf16, rows ldw apart),
// y_b = y + b * y_batch_stride (f32 when y_f32, else bf16; rows ldy apart). f32 accumulation.
struct GenericGemmParams {
  const void* x = nullptr;
  int64_t ldx = 0, x_batch_stride = 0;
  const void* w = nullptr;
  int64_t ldw = 0, w_batch_stride = 0;
  void* y = nullptr;
  int64_t ldy = 0, y_batch_stride = 0;
  bool y_f32 = false;
  int m = 0, n = 0, k = 0, batch = 1;
  float alpha = 1.0f, beta = 0.0f;
};
void gemm_generic(const GenericGemmParams& p, void* stream = nullptr);

}  // namespace indexcache::cuda
