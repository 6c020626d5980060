// The small CUDA kernels of the GPU model runner (everything that is not a GEMM or a DSA kernel):
// random weight init, positions and embeddings, RMSNorm / LayerNorm, RoPE, SiLU-gating, MoE routing,
// dispatch and combine, and the decode GEMV whose expert ids come from device memory.
//
// Every pointer is a DEVICE pointer. bf16 tensors are `void*` holding IEEE bfloat16. Each function
// only enqueues work on `stream` (cudaStream_t as void*) and throws indexcache::Error on bad
// arguments or launch errors. Nothing here synchronises or allocates, so all of it may be captured
// into a CUDA graph. No CUDA types in this header.
#pragma once

#include <cstddef>
#include <cstdint>

#include "indexcache/model_spec.h"

namespace indexcache::gpu {

// ---- init
// p[i] = scale * u(seed, tensor, i), u uniform in [-1, 1) from a counter hash (deterministic).
void fill_uniform_bf16(void* p, size_t n, uint64_t seed, uint64_t tensor, float scale, void* stream);
void fill_uniform_f32(float* p, size_t n, uint64_t seed, uint64_t tensor, float scale, void* stream);
void fill_const_bf16(void* p, size_t n, float value, void* stream);
// The token id the synthetic request holds at `position` (same on host and device).
int32_t synthetic_token(uint64_t seed, int64_t position, int vocab);

// ---- positions
// positions[t] = base + t and valid[t] = base + t + 1 for t < n, where base = first, plus
// *base_dev when base_dev is not null (decode: the position lives in device memory).
void set_positions(int32_t* positions, int32_t* valid, const int32_t* base_dev, int first, int n, void* stream);
// (*p) += 1.
void advance_position(int32_t* p, void* stream);
// x[t, :] (f32, rows `hidden` apart) = embed[synthetic_token(seed, positions[t])] (bf16 [vocab, hidden]).
void embed_tokens(const void* embed, float* x, const int32_t* positions, int n, int hidden, int vocab,
                  uint64_t seed, void* stream);

// x[t, :] (f32, rows `hidden` apart) = embed[ids[t]] (bf16 [vocab, hidden]); ids (device, n of them)
// are checked against the vocab by the caller.
void embed_ids(const void* embed, float* x, const int32_t* ids, int n, int hidden, void* stream);

// ---- norms
// y[t] (bf16) = x[t] * rsqrt(mean(x[t]^2) + eps) * w (w bf16 [dim]); x f32.
void rms_norm(const float* x, int64_t ldx, const void* w, void* y, int64_t ldy, int n, int dim, float eps,
              void* stream);
// The latent cache row of each token: tmp f32 [n, kvlr + rd] (kv_a_proj output) -> RMSNorm of the
// first kvlr dims (weights w), interleaved RoPE of the last rd dims, written as bf16 to
// cache[positions[t]] (rows of kvlr + rd elements).
void finalize_latent(const float* tmp, const void* w, void* cache, const int32_t* positions, const float* cos,
                     const float* sin, int n, int kvlr, int rd, float eps, void* stream);
// The indexer key of each token: tmp f32 [n, dim] -> LayerNorm (weights w, bias b, both bf16) ->
// RoPE of the first rd dims in `layout` -> bf16 to cache[positions[t]] (rows of dim elements).
void finalize_index_key(const float* tmp, const void* w, const void* b, void* cache, const int32_t* positions,
                        const float* cos, const float* sin, int n, int dim, int rd, RopeLayout layout, float eps,
                        void* stream);

// ---- RoPE on bf16: dst[t, h, 0..rd) = rotate(src[t, h, 0..rd)) at position positions[t], tables
// cos/sin f32 [positions, rd/2]. src may equal dst (in place). Pointers already point at the
// first rotated element of token 0, head 0.
struct RopeArgs {
  const void* src = nullptr;
  int64_t src_token_stride = 0, src_head_stride = 0;
  void* dst = nullptr;
  int64_t dst_token_stride = 0, dst_head_stride = 0;
  int tokens = 0, heads = 0, rope_dim = 0;
  const float* cos = nullptr;
  const float* sin = nullptr;
  const int32_t* positions = nullptr;
  RopeLayout layout = RopeLayout::kInterleaved;
};
void rope_bf16(const RopeArgs& a, void* stream);

// Copies a [rows, cols] bf16 block between strided row layouts (e.g. rope parts into the absorbed query).
void copy_rows_bf16(const void* src, int64_t lds, void* dst, int64_t ldd, int rows, int cols, void* stream);

// ---- activations: out[t, i] = silu(gu[t, i]) * gu[t, inter + i] (gate then up in one row).
void silu_mul_bf16(const void* gu, int64_t ld_gu, void* out, int64_t ld_out, int n, int inter, void* stream);
void silu_mul_f32(const float* gu, int64_t ld_gu, void* out, int64_t ld_out, int n, int inter, void* stream);

// ---- MoE
struct RouteArgs {
  const float* logits = nullptr;  // [n, experts] router logits
  const float* bias = nullptr;    // [experts] e_score_correction_bias
  int n = 0, experts = 0, groups = 1, topk_group = 1, k = 0;
  bool norm_topk_prob = true;
  float scaling = 1.0f;
  int32_t* chosen = nullptr;  // [n, k] expert ids, best first
  float* weights = nullptr;   // [n, k]
};
// Sigmoid scores; choice = score + bias; the topk_group groups with the best sum of their top-2
// choices; the k best choices inside them (ties: lower index); weights = scores of the chosen,
// divided by their sum (+1e-20) when norm_topk_prob, times scaling. Limits: experts <= 512, k <= 16.
void route_experts(const RouteArgs& a, void* stream);
// Dispatch of the n*k (token, expert) pairs: counts[e] (zeroed here), offsets[e] = exclusive prefix
// sum (offsets[experts] = n*k), slot[p] = the row of pair p in the expert-sorted order,
// slot_token[row] = the token of that row. `scratch` holds `experts` int32.
void moe_dispatch(const int32_t* chosen, int pairs, int k, int experts, int32_t* counts, int32_t* offsets,
                  int32_t* scratch, int32_t* slot, int32_t* slot_token, void* stream);
// xe[row] = x[slot_token[row]] for row < rows (bf16, rows `hidden` apart; any hidden).
void moe_gather(const void* x, const int32_t* slot_token, int rows, int hidden, void* xe, void* stream);
// x[t] += sum_i weights[t, i] * ye[slot[t * k + i]] (ye bf16 or f32 [rows, hidden]; slot null means
// identity: row t * k + i). x f32 [n, hidden].
void moe_combine(const void* ye, bool ye_f32, const int32_t* slot, const float* weights, int n, int k, int hidden,
                 float* x, void* stream);

// ---- decode GEMV: y[b, r] = alpha * sum_j W_b[r, j] * x_b[j] (+ beta * y[b, r]) for b < batch,
// r < rows, with W_b = w + (ids ? ids[b] : b) * w_batch_stride (bf16 [rows, cols], rows ldw apart)
// and x_b = x + b * x_batch_stride (bf16); y f32 or bf16, rows y_batch_stride apart (beta == 0: y is
// not read). The M = 1 form of GemmArgs; reads the weight once at close to memory bandwidth.
struct GemvArgs {
  const void* w = nullptr;
  int64_t ldw = 0, w_batch_stride = 0;
  const int32_t* ids = nullptr;  // optional [batch] device ids selecting W_b (experts)
  const void* x = nullptr;
  int64_t x_batch_stride = 0;
  void* y = nullptr;
  bool y_f32 = true;
  int64_t y_batch_stride = 0;
  int batch = 1;
  int64_t rows = 0;
  int cols = 0;
  float alpha = 1.0f, beta = 0.0f;
};
// Whether gemv() accepts `a`: cols, ldw and the strides multiples of 8 elements, w and x 16-byte
// aligned, batch <= 65535.
bool gemv_supported(const GemvArgs& a);
void gemv(const GemvArgs& a, void* stream);
// Expert form kept for the MoE: f32 output, ldw = cols. cols % 8 == 0 and 16-byte aligned rows (checked).
void gemv_bf16(const void* w, int64_t w_batch_stride, const int32_t* ids, const void* x, int64_t x_batch_stride,
               float* y, int64_t y_batch_stride, int batch, int rows, int cols, void* stream);

}  // namespace indexcache::gpu
