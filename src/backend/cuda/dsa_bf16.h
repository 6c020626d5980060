// Tensor-core (bf16) DSA kernels for Hopper: the lightning-indexer scores, the radix top-k and the
// sparse MLA attention in absorbed form. No CUDA types here, so plain C++ can include this header.
//
// Every pointer is a DEVICE pointer; bf16 tensors are passed as `const void*` / `void*` holding
// IEEE bfloat16 (the top 16 bits of an f32). Functions only enqueue work on `stream` (a cudaStream_t
// as void*, nullptr = legacy default stream) and return at once. Argument errors throw
// indexcache::Error (kRuntime) through throw_runtime, before anything is launched.
//
// Causality everywhere is by position: query t has absolute position positions[t] and may see the
// keys 0..positions[t] (inclusive) of the cache; keys beyond are never read.
#pragma once

#include <cstddef>
#include <cstdint>

namespace indexcache::cuda {

// Lightning-indexer scores, fused: for each query t and key s <= positions[t],
//   scores[t, s] = scale * sum_h w[t, h] * relu(q[t, h, :] . k[s, :])
// and scores[t, s] = -inf for positions[t] < s < keys. The per-head dot products live only in
// registers (tensor-core accumulators, f32); nothing per head is written to memory.
//   q: bf16 [tokens][heads][head_dim]; k: bf16 [keys][head_dim] (the layer's indexer key cache);
//   w: f32 [tokens][heads]; scores: f32 rows of `scores_stride` floats (>= keys).
// Limits: head_dim == 128 (the indexer of every DSA model), heads % 8 == 0 and heads <= 128.
struct IndexerBf16Params {
  const void* q = nullptr;
  const void* k = nullptr;
  const float* w = nullptr;
  const int32_t* positions = nullptr;  // [tokens]
  float* scores = nullptr;
  int64_t scores_stride = 0;
  int tokens = 0, keys = 0, heads = 0, head_dim = 128;
  float scale = 1.0f;
};
void indexer_scores_bf16(const IndexerBf16Params& p, void* stream = nullptr);

// Row-wise top-k by radix selection (no full sort): for each row t, the indices of the k largest of
// scores[t, 0..valid[t]); rows with valid[t] <= k get 0..valid[t]-1 then -1. The k indices of a row
// are not sorted, but their order is deterministic (the same list on every run, so consumers that
// accumulate over it are reproducible); among equal scores at the threshold the lower indices win, so the
// selected SET equals the CPU backend's top-k set exactly on identical inputs.
// Limits: k <= 2048; valid[t] <= scores_stride.
struct TopkRadixParams {
  const float* scores = nullptr;
  int64_t scores_stride = 0;
  const int32_t* valid = nullptr;  // [tokens]
  int32_t* indices = nullptr;      // [tokens][k]
  int tokens = 0, k = 0;
};
void topk_radix(const TopkRadixParams& p, void* stream = nullptr);

// Sparse MLA attention in absorbed (MQA) form: one latent KV row per token shared by all heads.
//   q: bf16 [tokens][heads][dim_k] (absorbed: kv_lora dims then rope dims, e.g. 512 + 64 = 576);
//   kv: bf16 [keys][kv_stride] latent cache row (first dim_k elements are the key; the first dim_v
//       elements are the value, e.g. 512);
//   indices: int32 [tokens][num_selected], entries < 0 are skipped;
//   out: bf16 [tokens][heads][dim_v]; optional lse: f32 [tokens][heads] (natural log-sum-exp of the
//   scaled logits; -inf when nothing is selected, and then out is 0).
// out[t,h] = sum_j softmax_j(scale * q[t,h] . kv[j, :dim_k]) * kv[j, :dim_v] over selected j.
// Limits: dim_k == 576, dim_v == 512, heads <= 128, num_selected <= 2048 (the DSA shapes).
// Works for any `tokens` (prefill chunks and single-token decode); for few tokens it splits the
// selected set across blocks and combines (flash-decoding).
struct SparseMlaParams {
  const void* q = nullptr;
  const void* kv = nullptr;
  int64_t kv_stride = 576;
  const int32_t* indices = nullptr;
  int num_selected = 0;
  void* out = nullptr;
  float* lse = nullptr;
  int tokens = 0, heads = 0, dim_k = 576, dim_v = 512;
  float scale = 1.0f;
  // Splits of the selected set per (token, head group): 0 = automatic (1 when tokens fill the
  // GPU, more for decode); >= 1 forces that many (capped by the number of 64-row tiles). Tests use
  // it to exercise both the direct and the split-and-combine paths on the same shapes.
  int num_splits = 0;
  // Optional device workspace for the split partials (f32), at least sparse_mla_workspace_bytes(p)
  // bytes, 16-byte aligned. With it no memory is allocated per call (CUDA-graph capturable); when
  // null and splits are needed, the call allocates and frees stream-ordered (cudaMallocAsync).
  // A non-null workspace smaller than needed is an error.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // Kernel variant, for A/B measurement: 0 = default; 1 = deep cp.async pipeline (32-row tiles, 5
  // buffers, up to 4 tiles of gathers in flight) where it applies (heads <= 32 and one split),
  // else the default. Same results either way (up to f32 summation order).
  int variant = 0;
};
void sparse_mla_bf16(const SparseMlaParams& p, void* stream = nullptr);
// Workspace bytes sparse_mla_bf16 needs for `p` on the current device (0 when it will not split).
// Depends only on tokens, heads, num_selected and num_splits (and the SM count for automatic
// splits); it is never more than tokens * heads * 32 * 513 * 4 bytes.
size_t sparse_mla_workspace_bytes(const SparseMlaParams& p);

}  // namespace indexcache::cuda
