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
  // Kernel, for A/B measurement (same results up to f32 summation order): 0 = default, the wgmma
  // (sm_90a) kernel for 16, 32, 64 or 128 heads and >= 64 tokens, else the mma.sync kernel;
  // 1 = mma.sync; 2 = wgmma (an error for other head counts); 3 = wgmma with two warpgroups per
  // block instead of three (32 heads only; measurement).
  int variant = 0;
};
void indexer_scores_bf16(const IndexerBf16Params& p, void* stream = nullptr);

// Row-wise top-k by radix selection (no full sort): for each row t, the indices of the k largest of
// scores[t, 0..valid[t]); rows with valid[t] <= k get 0..valid[t]-1 then -1. The k indices of a row
// are not sorted, but their order is deterministic (the same list on every run, so consumers that
// accumulate over it are reproducible); among equal scores at the threshold the lower indices win, so the
// selected SET equals the CPU backend's top-k set exactly on identical inputs.
// Limits: k <= 2048; valid[t] <= scores_stride.
// Few rows (decode: tokens <= 8, long rows): with a device scratch of topk_radix_scratch_bytes(p)
// bytes (16-byte aligned) each row is split over many blocks (several launches, no allocation, no
// host sync: CUDA-graph capturable); the index lists are identical to the single-block path's.
// Without scratch, or when topk_radix_scratch_bytes(p) == 0, one block per row. A non-null scratch
// smaller than needed is an error.
struct TopkRadixParams {
  const float* scores = nullptr;
  int64_t scores_stride = 0;
  const int32_t* valid = nullptr;  // [tokens]
  int32_t* indices = nullptr;      // [tokens][k]
  int tokens = 0, k = 0;
  void* scratch = nullptr;
  size_t scratch_bytes = 0;
};
void topk_radix(const TopkRadixParams& p, void* stream = nullptr);
// Scratch bytes the multi-block path needs for `p` (0 when it does not apply: tokens > 8 or
// scores_stride <= 8192). Depends only on tokens and scores_stride: about tokens * (scores_stride
// rounded up to 4096) * 4 + tokens * 16 KiB.
size_t topk_radix_scratch_bytes(const TopkRadixParams& p);

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
  // Kernel variant, for A/B measurement (same results up to f32 summation and bf16 rounding order):
  // 0 = default: the wgmma (sm_90a) kernel whenever the plan has one split of the selected set
  // (prefill; any head count), else the mma.sync kernel (split and combine, decode);
  // 1 = mma.sync only: the deep cp.async pipeline (32-row tiles, 5 buffers, up to 4 tiles of
  // gathers in flight) where it applies (heads <= 32 and one split), else the 64-row-tile kernel;
  // 2 = wgmma (automatic splits then mean one split; an error when num_splits forces more);
  // 3 = the mma.sync 64-row-tile kernel only (the default before the wgmma kernel).
  int variant = 0;
};
void sparse_mla_bf16(const SparseMlaParams& p, void* stream = nullptr);
// Workspace bytes sparse_mla_bf16 needs for `p` on the current device (0 when it will not split).
// Depends only on tokens, heads, num_selected and num_splits (and the SM count for automatic
// splits); it is never more than tokens * heads * 32 * 513 * 4 bytes.
size_t sparse_mla_workspace_bytes(const SparseMlaParams& p);

// ---- FP8 (e4m3) lightning indexer: an option beside the bf16 one (DeepSeek-V3.2 runs its indexer
// in FP8). e4m3 tensors are `const void*` holding one byte per element (OCP/NVIDIA E4M3: bias 7,
// max 448, no infinities). Each 128-element row carries one f32 dequantisation scale.
// Scores, same masking and -inf rules as indexer_scores_bf16:
//   scores[t, s] = scale * sum_h w[t, h] * relu(q_scale[t, h] * k_scale[s] * (q8[t, h, :] . k8[s, :]))
// with f32 accumulation. Scales must be >= 0 and finite (quantize_rows_fp8 makes them so); the
// kernel uses relu(a * b * x) = a * b * relu(x) for a, b >= 0.
// Limits as for bf16: head_dim == 128, heads % 8 == 0 and heads <= 128; q, k 16-byte aligned.
struct IndexerFp8Params {
  const void* q = nullptr;          // e4m3 [tokens][heads][128]
  const float* q_scale = nullptr;   // [tokens][heads], dequant scale of each q row
  const void* k = nullptr;          // e4m3 [keys][128]
  const float* k_scale = nullptr;   // [keys]
  const float* w = nullptr;         // [tokens][heads]
  const int32_t* positions = nullptr;  // [tokens]
  float* scores = nullptr;
  int64_t scores_stride = 0;
  int tokens = 0, keys = 0, heads = 0, head_dim = 128;
  float scale = 1.0f;
  // Kernel: 0 = default (wgmma e4m3 for 16, 32, 64 or 128 heads and >= 64 tokens, else the
  // mma.sync kernel); 1 = the mma.sync kernel (f16 MMAs on converted operands); 2 = wgmma (an error
  // for other head counts); 3 = wgmma with two warpgroups per block (32 heads only; measurement).
  int variant = 0;
};
void indexer_scores_fp8(const IndexerFp8Params& p, void* stream = nullptr);

// bf16 -> e4m3 per 128-element row: out_scale[r] = amax_r / 448 and
// out[r, i] = e4m3_rn_satfinite(in[r, i] * inv_r) with inv_r = min(448 / amax_r, FLT_MAX)
// (f32 ops, IEEE rounding; inv_r = 0 for an all-zero row, whose scale is 0). Inputs finite.
// in_bf16: [rows][128] (8-byte aligned); out_e4m3: [rows][128] bytes (4-byte aligned); out_scale: [rows].
// rotate: quantize H x instead of x, H the orthonormal 128 x 128 Walsh-Hadamard matrix (f32
// butterflies, then 1 / sqrt(128)), as DeepSeek-V3.2's indexer does before FP8: H is orthogonal, so
// (H q) . (H k) = q . k up to rounding; the rotation spreads large dimensions over the whole row
// (whether that lowers the e4m3 error depends on the data; see tests/test_cuda_indexer_fp8.cpp).
// Rotate q and k alike.
void quantize_rows_fp8(const void* in_bf16, void* out_e4m3, float* out_scale, int64_t rows,
                       void* stream = nullptr, bool rotate = false);
// The same for scattered rows: the i-th of `rows` rows is row rows_at[i] (device int32 array) of
// both the input and the outputs, e.g. the cache rows a chunk or decode step just wrote (positions
// read on the device, so a captured decode step quantizes the right row on every replay).
void quantize_rows_fp8_at(const void* in_bf16, void* out_e4m3, float* out_scale, const int32_t* rows_at,
                          int64_t rows, void* stream = nullptr, bool rotate = false);

}  // namespace indexcache::cuda
