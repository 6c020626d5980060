// The small CUDA kernels the CUDA backend (cuda_backend.cpp) needs beside the DSA kernels and the
// bf16 GEMMs: strided copy / conversion, add, scale, embedding rows, RMSNorm / LayerNorm over any
// f32 / bf16 combination, f32 RoPE, the f32 GEMM of the exact path, SiLU-gating, the row gather /
// weighted scatter-add of the exact MoE, the f32 -> bf16 conversion of weight placement, and bias
// rows. No CUDA types here.
//
// Every pointer is a DEVICE pointer; bf16 tensors hold IEEE bfloat16 bits. Each function only
// enqueues work on `stream` (cudaStream_t as void*) and throws indexcache::Error (kRuntime) on
// bad arguments or launch errors; nothing allocates or synchronises.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "indexcache/dtype.h"
#include "indexcache/model_spec.h"

namespace indexcache::cuda::bk {

// A strided operand seen as [d0, d1, d2] (innermost contiguous), strides in elements. Views of rank
// 1 are [1, 1, n]; of rank 2 [1, rows, cols] with s1 the row stride.
struct Strided {
  void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t d0 = 1, d1 = 1, d2 = 1;
  int64_t s0 = 0, s1 = 0;
};

// dst = src elementwise over equal shapes: f32 -> f32, bf16 -> bf16, i32 -> i32, f32 -> bf16
// (round to nearest even), bf16 -> f32. src and dst must not overlap (unless equal). With dst_rows
// (device int32 [src rows], 2-D operands [1, rows, cols]): src row i goes to dst row dst_rows[i]
// (dst has its own row count d1; rows outside it are skipped).
void copy(const Strided& src, const Strided& dst, void* stream, const int32_t* dst_rows = nullptr);
// x += y (x f32 or bf16; y f32 or bf16; equal shapes), in f32.
void add(const Strided& x, const Strided& y, void* stream);
// x *= factor (f32 or bf16).
void scale(const Strided& x, float factor, void* stream);

// out[t, :] = table[ids[t], :] for t < n (table f32 or bf16, rows ldt apart, `vocab` rows; out f32
// or bf16, rows ldo apart). An id outside [0, vocab) gives a row of NaN rather than a wild read.
void embed(const void* table, DType table_t, int64_t ldt, int64_t vocab, const int32_t* ids, void* out,
           DType out_t, int64_t ldo, int n, int hidden, void* stream);

// RMSNorm (y = x * rsqrt(mean(x^2) + eps) * w) or LayerNorm (y = (x - mean) * rsqrt(var + eps) * w
// + b, b optional) of each row; the CPU kernel's formula and rounding order. x, y f32 or bf16, w and b
// f32 or bf16 (one dtype). y may be x (same dtype). exact: the row sums in f64 as on the CPU
// (the f32 path); else in f32.
struct NormArgs {
  const void* x = nullptr;
  DType x_t = DType::kF32;
  int64_t ldx = 0;
  const void* w = nullptr;
  const void* b = nullptr;  // LayerNorm bias, optional
  DType w_t = DType::kF32;
  void* y = nullptr;
  DType y_t = DType::kF32;
  int64_t ldy = 0;
  int rows = 0, dim = 0;
  float eps = 1e-6f;
  bool layer_norm = false;
  bool exact = true;
};
void norm(const NormArgs& a, void* stream);

// In-place RoPE of f32 x: for token t, head h, pair i < rope_dim / 2 (interleaved (2i, 2i+1) or
// half-split (i, i + half)) of the dims starting at x + t * token_stride + h * head_stride (already
// offset to the first rotated dim), at position positions[t]; cos / sin f32 [positions, rope_dim / 2].
struct RopeF32Args {
  float* x = nullptr;
  int64_t token_stride = 0, head_stride = 0;
  int tokens = 0, heads = 0, rope_dim = 0;
  const float* cos = nullptr;
  const float* sin = nullptr;
  const int32_t* positions = nullptr;
  RopeLayout layout = RopeLayout::kInterleaved;
};
void rope_f32(const RopeF32Args& a, void* stream);

// f32 GEMM, strided-batched: for b < batch, y_b[m, n] = alpha * sum_k x_b[m, k] * w_b[n, k]
// (+ bias[n]) (+ beta * y_b[m, n]; beta == 0: y not read), x_b = x + b * x_batch_stride (rows ldx
// apart), likewise w_b and y_b. f32 accumulation in k order per output (FMA). Any shapes and strides.
struct GemmF32Args {
  const float* x = nullptr;
  int64_t ldx = 0, x_batch_stride = 0;
  const float* w = nullptr;
  int64_t ldw = 0, w_batch_stride = 0;
  const float* bias = nullptr;  // [n], optional (the same for every batch)
  float* y = nullptr;
  int64_t ldy = 0, y_batch_stride = 0;
  int m = 0, n = 0, k = 0, batch = 1;
  float alpha = 1.0f, beta = 0.0f;
};
void gemm_f32(const GemmF32Args& a, void* stream);

// y[r, c] = bias[c] (bias f32 or bf16; null: 0) for r < rows, c < cols; y f32 or bf16, rows ldy
// apart. Prefills a GEMM output that then accumulates with beta = 1 (bias in one rounding).
void fill_rows(void* y, DType y_t, int64_t ldy, const void* bias, DType bias_t, int rows, int cols, void* stream);

// out[r, i] = silu(gate[r, i]) * up[r, i] = gate / (1 + exp(-gate)) * up, f32 in and out (the exact
// path's SwiGLU); gate, up and out rows lg, lu and lo apart (out may be gate).
void silu_mul_f32(const float* gate, int64_t lg, const float* up, int64_t lu, float* out, int64_t lo, int rows,
                  int inter, void* stream);

// out[j, :] = x[rows[j], :] for j < n (f32; x rows ldx apart, out rows ldo apart).
void gather_rows_f32(const float* x, int64_t ldx, const int32_t* rows, int n, int cols, float* out, int64_t ldo,
                     void* stream);
// dst[rows[j], :] += weights[j] * src[j, :] for j < n, in j order per element (f32). rows must be
// distinct within one call.
void scatter_add_rows_f32(const float* src, int64_t lds, const int32_t* rows, const float* weights, int n, int cols,
                          float* dst, int64_t ldd, void* stream);

// dst[i] = bf16(src[i]) (round to nearest even) for i < n.
void f32_to_bf16(const float* src, void* dst, size_t n, void* stream);

// "" when this build's kernels can run on the current device, else why not (no kernel image for
// its architecture, ...).
std::string kernels_unavailable_reason();

}  // namespace indexcache::cuda::bk
