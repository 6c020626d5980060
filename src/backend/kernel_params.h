// Raw-pointer parameter structs of the f32 reference kernels (src/backend/cpu/kernels.h) and of
// the f32 CUDA kernels of the exact path (src/backend/cuda/cuda_ops.h). The model does not use
// these: it calls the Backend (backend.h) with views, and each backend turns the views into these.
//
// All tensors are f32, row-major, addressed by raw pointers with explicit strides (in elements).
// Shapes are given in comments as [rows, cols].
#pragma once

#include <cstdint>
#include <memory>

#include "indexcache/model_spec.h"

namespace indexcache {

// y[T, out] = x[T, in] * W[out, in]^T (+ bias[out]).
struct LinearParams {
  const float* x = nullptr;
  int64_t x_stride = 0;  // >= in
  const float* w = nullptr;
  const float* bias = nullptr;  // optional
  float* y = nullptr;
  int64_t y_stride = 0;  // >= out
  int tokens = 0, in = 0, out = 0;
};

// y[T, d] = x * rsqrt(mean(x^2) + eps) * w (RMSNorm) or (x - mean) * rsqrt(var + eps) * w + b
// (LayerNorm, when `bias` is set and `layer_norm` is true). y may alias x.
struct NormParams {
  const float* x = nullptr;
  int64_t x_stride = 0;
  const float* w = nullptr;
  const float* bias = nullptr;
  float* y = nullptr;
  int64_t y_stride = 0;
  int tokens = 0, dim = 0;
  float eps = 1e-6f;
  bool layer_norm = false;
};

// Rotates `rope_dim` dims starting at `offset` in each head of x[T, heads, *] in place.
// cos/sin tables are [positions, rope_dim/2]; token t uses row positions[t].
struct RopeParams {
  float* x = nullptr;
  int64_t token_stride = 0, head_stride = 0;
  int tokens = 0, heads = 0, offset = 0, rope_dim = 0;
  const float* cos = nullptr;
  const float* sin = nullptr;
  const int32_t* positions = nullptr;
  RopeLayout layout;
};

// Lightning indexer scores for queries at positions[t] against keys 0..S-1 (key s at position s):
//   I[t, s] = sum_h w[t, h] * ReLU(q[t, h, :] . k[s, :]) * scale   for s <= positions[t].
// Entries with s > positions[t] are -inf. q: [T, H, D]; w: [T, H]; k: [S, D]; scores: [T, S].
struct IndexerScoreParams {
  const float* q = nullptr;
  const float* w = nullptr;
  const float* k = nullptr;
  const int32_t* positions = nullptr;
  float* scores = nullptr;
  int64_t scores_stride = 0;
  int tokens = 0, keys = 0, heads = 0, head_dim = 0;
  float scale = 1.0f;
};

// Row-wise top-k: for each row t, the indices of the k largest of scores[t, 0..valid[t]), in
// descending score order; rows with valid[t] < k are filled with 0..valid[t]-1 then -1.
struct TopkParams {
  const float* scores = nullptr;
  int64_t scores_stride = 0;
  const int32_t* valid = nullptr;  // candidates per row
  int32_t* indices = nullptr;      // [T, k]
  int tokens = 0, k = 0;
};

// Sparse attention: for each query t and head h, softmax(scale * q[t,h] . K[j]) over the selected
// j = indices[t, :] (entries < 0 skipped), weighted sum of V[j]. K/V have `kv_heads` heads: 1 for
// the absorbed (MQA) form, `heads` for the expanded form. q: [T, H, Dk]; k: [S, Hkv, Dk];
// v: [S, Hkv, Dv]; out: [T, H, Dv].
struct SparseAttentionParams {
  const float* q = nullptr;
  int64_t q_token_stride = 0, q_head_stride = 0;
  const float* k = nullptr;
  int64_t k_token_stride = 0, k_head_stride = 0;
  const float* v = nullptr;
  int64_t v_token_stride = 0, v_head_stride = 0;
  const int32_t* indices = nullptr;
  int num_selected = 0;
  float* out = nullptr;
  int64_t out_token_stride = 0, out_head_stride = 0;
  int tokens = 0, heads = 0, kv_heads = 1, head_dim_k = 0, head_dim_v = 0;
  float scale = 1.0f;
};

}  // namespace indexcache
