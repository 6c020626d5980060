// Small kernels of the CUDA backend (see backend_kernels.h). Elementwise kernels walk a [d0, d1, d2]
// strided operand as rows (d0 * d1 of them, grid y) of d2 contiguous elements (grid x); norms use one
// block per row with a block-wide reduction; the f32 GEMM is a 64 x 64 shared-memory tiled kernel
// with a 4 x 4 register tile per thread.
#include "backend/cuda/backend_kernels.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "backend/cuda/cuda_check.cuh"
#include "indexcache/error.h"

namespace indexcache::cuda::bk {

namespace {

using bf16 = __nv_bfloat16;
constexpr unsigned kFull = 0xFFFFFFFFu;

cudaStream_t cs(void* s) { return static_cast<cudaStream_t>(s); }

void require(bool ok, const char* what, const std::string& why) {
  if (!ok) throw_runtime(std::string("cuda ") + what, why);
}

__device__ __forceinline__ float ld(const float* p) { return *p; }
__device__ __forceinline__ float ld(const bf16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ void st(bf16* p, float v) { *p = __float2bfloat16(v); }

// ---------------------------------------------------------------- strided elementwise

// Calls f(i0, i1, c) for every element of a [d0, d1, d2] operand: rows r = i0 * d1 + i1 over grid y,
// columns c over grid x (both grid-strided).
template <class F>
__global__ void strided_kernel(int64_t d1, int64_t d2, int64_t rows, F f) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const int64_t i0 = r / d1, i1 = r % d1;
    for (int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; c < d2; c += int64_t{gridDim.x} * blockDim.x)
      f(i0, i1, c);
  }
}

template <class F>
void launch_strided(const char* what, int64_t d0, int64_t d1, int64_t d2, const F& f, void* stream) {
  const int64_t rows = d0 * d1;
  if (rows <= 0 || d2 <= 0) return;
  constexpr int kThreads = 256;
  const unsigned gx = static_cast<unsigned>(std::min<int64_t>((d2 + kThreads - 1) / kThreads, 1024));
  const unsigned gy = static_cast<unsigned>(std::min<int64_t>(rows, 65535));
  strided_kernel<<<dim3(gx, gy), kThreads, 0, cs(stream)>>>(d1, d2, rows, f);
  IC_CUDA_CHECK_LAUNCH(what);
}

template <class S, class D>
struct CopyFn {
  const S* s;
  int64_t ss0, ss1;
  D* d;
  int64_t ds0, ds1;
  const int32_t* rows;  // dst row of src row i1, or nullptr (same row)
  int64_t dst_rows;     // rows of dst (rows[] outside it are skipped)
  __device__ void operator()(int64_t i0, int64_t i1, int64_t c) const {
    const S v = s[i0 * ss0 + i1 * ss1 + c];
    int64_t j1 = i1;
    if (rows) {
      j1 = rows[i1];
      if (j1 < 0 || j1 >= dst_rows) return;
    }
    D* out = d + i0 * ds0 + j1 * ds1 + c;
    if constexpr (std::is_same_v<S, D>)
      *out = v;
    else
      st(out, ld(&v));
  }
};

template <class X, class Y>
struct AddFn {
  X* x;
  int64_t xs0, xs1;
  const Y* y;
  int64_t ys0, ys1;
  __device__ void operator()(int64_t i0, int64_t i1, int64_t c) const {
    X* p = x + i0 * xs0 + i1 * xs1 + c;
    st(p, ld(p) + ld(y + i0 * ys0 + i1 * ys1 + c));
  }
};

template <class X>
struct ScaleFn {
  X* x;
  int64_t s0, s1;
  float f;
  __device__ void operator()(int64_t i0, int64_t i1, int64_t c) const {
    X* p = x + i0 * s0 + i1 * s1 + c;
    st(p, ld(p) * f);
  }
};

template <class S, class D>
void copy_t(const Strided& s, const Strided& d, const int32_t* rows, void* stream) {
  launch_strided("copy", s.d0, s.d1, s.d2,
                 CopyFn<S, D>{static_cast<const S*>(s.data), s.s0, s.s1, static_cast<D*>(d.data), d.s0, d.s1, rows, d.d1},
                 stream);
}
template <class X, class Y>
void add_t(const Strided& x, const Strided& y, void* stream) {
  launch_strided("add", x.d0, x.d1, x.d2,
                 AddFn<X, Y>{static_cast<X*>(x.data), x.s0, x.s1, static_cast<const Y*>(y.data), y.s0, y.s1}, stream);
}

bool same_shape(const Strided& a, const Strided& b) { return a.d0 == b.d0 && a.d1 == b.d1 && a.d2 == b.d2; }
bool is_float(DType t) { return t == DType::kF32 || t == DType::kBF16; }

// ---------------------------------------------------------------- embed

template <class T, class O>
__global__ void embed_kernel(const T* table, int64_t ldt, int64_t vocab, const int32_t* ids, O* out, int64_t ldo,
                             int hidden) {
  const int t = blockIdx.x;
  const int64_t id = ids[t];
  O* o = out + t * ldo;
  if (id < 0 || id >= vocab) {
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) st(o + i, __int_as_float(0x7fc00000));
    return;
  }
  const T* row = table + id * ldt;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) st(o + i, ld(row + i));
}

template <class T, class O>
void embed_t(const void* table, int64_t ldt, int64_t vocab, const int32_t* ids, void* out, int64_t ldo, int n,
             int hidden, void* stream) {
  embed_kernel<T, O><<<n, 256, 0, cs(stream)>>>(static_cast<const T*>(table), ldt, vocab, ids, static_cast<O*>(out),
                                                ldo, hidden);
  IC_CUDA_CHECK_LAUNCH("embed");
}

// ---------------------------------------------------------------- norms

// Sum of v over the block (blockDim.x a multiple of 32); every thread gets the same result (summed
// in warp order, deterministic). The leading barrier protects `part` from a previous call.
template <class A>
__device__ A block_sum(A v, A* part) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  A r = 0;
  for (int i = 0; i < warps; ++i) r += part[i];
  return r;
}

template <class X, class W, class Y, class A>
__global__ void norm_kernel(NormArgs a) {
  __shared__ A part[32];
  const int64_t r = blockIdx.x;
  const X* x = static_cast<const X*>(a.x) + r * a.ldx;
  Y* y = static_cast<Y*>(a.y) + r * a.ldy;
  const W* w = static_cast<const W*>(a.w);
  const W* b = static_cast<const W*>(a.b);
  const int d = a.dim;
  if (a.layer_norm) {
    A s = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) s += static_cast<A>(ld(x + i));
    const A mean = block_sum(s, part) / d;
    A s2 = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      const A c = static_cast<A>(ld(x + i)) - mean;
      s2 += c * c;
    }
    const A var = block_sum(s2, part) / d;
    const float inv = static_cast<float>(A(1) / sqrt(var + static_cast<A>(a.eps)));
    const float m = static_cast<float>(mean);
    for (int i = threadIdx.x; i < d; i += blockDim.x)
      st(y + i, (ld(x + i) - m) * inv * ld(w + i) + (b ? ld(b + i) : 0.0f));
  } else {
    A ss = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      const A v = static_cast<A>(ld(x + i));
      ss += v * v;
    }
    const float inv = static_cast<float>(A(1) / sqrt(block_sum(ss, part) / d + static_cast<A>(a.eps)));
    for (int i = threadIdx.x; i < d; i += blockDim.x) st(y + i, ld(x + i) * inv * ld(w + i));
  }
}

int norm_threads(int dim) {
  int t = 32;
  while (t < dim && t < 256) t *= 2;
  return t;
}

template <class X, class W, class Y>
void norm_t(const NormArgs& a, void* stream) {
  const int threads = norm_threads(a.dim);
  if (a.exact)
    norm_kernel<X, W, Y, double><<<a.rows, threads, 0, cs(stream)>>>(a);
  else
    norm_kernel<X, W, Y, float><<<a.rows, threads, 0, cs(stream)>>>(a);
  IC_CUDA_CHECK_LAUNCH("norm");
}

template <class X, class W>
void norm_y(const NormArgs& a, void* stream) {
  if (a.y_t == DType::kF32)
    norm_t<X, W, float>(a, stream);
  else
    norm_t<X, W, bf16>(a, stream);
}
template <class X>
void norm_w(const NormArgs& a, void* stream) {
  if (a.w_t == DType::kF32)
    norm_y<X, float>(a, stream);
  else
    norm_y<X, bf16>(a, stream);
}

// ---------------------------------------------------------------- RoPE (f32)

__global__ void rope_f32_kernel(RopeF32Args a, int half, int64_t total) {
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= total) return;
  const int i = static_cast<int>(idx % half);
  const int h = static_cast<int>((idx / half) % a.heads);
  const int64_t t = idx / (int64_t{half} * a.heads);
  float* x = a.x + t * a.token_stride + h * a.head_stride;
  const int64_t p = a.positions[t];
  const bool inter = a.layout == RopeLayout::kInterleaved;
  float* pa = inter ? x + 2 * i : x + i;
  float* pb = inter ? x + 2 * i + 1 : x + i + half;
  const float c = a.cos[p * half + i], s = a.sin[p * half + i];
  const float x0 = *pa, x1 = *pb;
  *pa = x0 * c - x1 * s;
  *pb = x1 * c + x0 * s;
}

// ---------------------------------------------------------------- f32 GEMM

constexpr int kTm = 64, kTn = 64, kTk = 16, kGemmThreads = 256;

// Block: a 64 x 64 tile of y; thread (tr, tc) owns rows tr * 4 .. + 4 and columns tc * 4 .. + 4.
// x and w tiles are staged k-major in shared memory (xs[k][row], ws[k][col]).
__global__ void __launch_bounds__(kGemmThreads) gemm_f32_kernel(GemmF32Args a) {
  __shared__ float xs[kTk][kTm + 4];
  __shared__ float ws[kTk][kTn + 4];
  const int64_t b = blockIdx.z;
  const float* x = a.x + b * a.x_batch_stride;
  const float* w = a.w + b * a.w_batch_stride;
  float* y = a.y + b * a.y_batch_stride;
  const int m0 = blockIdx.y * kTm, n0 = blockIdx.x * kTn;
  const int tid = threadIdx.x, tr = tid / 16, tc = tid % 16;
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
  for (int k0 = 0; k0 < a.k; k0 += kTk) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int e = tid + i * kGemmThreads;  // 0 .. 1023: row e / 16, k offset e % 16
      const int r = e / kTk, kk = e % kTk, gk = k0 + kk;
      const int gm = m0 + r, gn = n0 + r;
      xs[kk][r] = (gm < a.m && gk < a.k) ? x[static_cast<int64_t>(gm) * a.ldx + gk] : 0.0f;
      ws[kk][r] = (gn < a.n && gk < a.k) ? w[static_cast<int64_t>(gn) * a.ldw + gk] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTk; ++kk) {
      float xv[4], wv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        xv[i] = xs[kk][tr * 4 + i];
        wv[i] = ws[kk][tc * 4 + i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(xv[i], wv[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int gm = m0 + tr * 4 + i;
    if (gm >= a.m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int gn = n0 + tc * 4 + j;
      if (gn >= a.n) continue;
      float* out = y + static_cast<int64_t>(gm) * a.ldy + gn;
      float v = a.alpha * acc[i][j];
      if (a.bias) v += a.bias[gn];
      if (a.beta != 0.0f) v += a.beta * *out;
      *out = v;
    }
  }
}

// ---------------------------------------------------------------- bias rows, SiLU, MoE helpers

template <class Y, class B>
struct FillFn {
  Y* y;
  int64_t ldy;
  const B* bias;
  __device__ void operator()(int64_t, int64_t r, int64_t c) const { st(y + r * ldy + c, bias ? ld(bias + c) : 0.0f); }
};

template <class Y, class B>
void fill_t(void* y, int64_t ldy, const void* bias, int rows, int cols, void* stream) {
  launch_strided("fill_rows", 1, rows, cols, FillFn<Y, B>{static_cast<Y*>(y), ldy, static_cast<const B*>(bias)},
                 stream);
}

struct SiluFn {
  const float* g;
  int64_t lg;
  const float* u;
  int64_t lu;
  float* o;
  int64_t lo;
  __device__ void operator()(int64_t, int64_t r, int64_t i) const {
    const float gv = g[r * lg + i];
    o[r * lo + i] = gv / (1.0f + expf(-gv)) * u[r * lu + i];
  }
};

struct GatherFn {
  const float* x;
  int64_t ldx;
  const int32_t* rows;
  float* out;
  int64_t ldo;
  __device__ void operator()(int64_t, int64_t j, int64_t c) const { out[j * ldo + c] = x[rows[j] * ldx + c]; }
};

struct ScatterAddFn {
  const float* src;
  int64_t lds;
  const int32_t* rows;
  const float* wts;
  float* dst;
  int64_t ldd;
  __device__ void operator()(int64_t, int64_t j, int64_t c) const {
    float* p = dst + static_cast<int64_t>(rows[j]) * ldd + c;
    *p += wts[j] * src[j * lds + c];
  }
};

__global__ void f32_to_bf16_kernel(const float* src, bf16* dst, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    dst[i] = __float2bfloat16(src[i]);
}

}  // namespace

void copy(const Strided& s, const Strided& d, void* stream, const int32_t* dst_rows) {
  if (dst_rows)
    require(s.d0 == 1 && d.d0 == 1 && s.d2 == d.d2, "copy", "dst_rows needs 2-D operands of one width");
  else
    require(same_shape(s, d), "copy", "shapes differ");
  require(s.data && d.data, "copy", "null operand");
  if (s.dtype == d.dtype) {
    switch (s.dtype) {
      case DType::kF32: return copy_t<float, float>(s, d, dst_rows, stream);
      case DType::kBF16: return copy_t<bf16, bf16>(s, d, dst_rows, stream);
      case DType::kI32: return copy_t<int32_t, int32_t>(s, d, dst_rows, stream);
      default: break;
    }
  } else if (s.dtype == DType::kF32 && d.dtype == DType::kBF16) {
    return copy_t<float, bf16>(s, d, dst_rows, stream);
  } else if (s.dtype == DType::kBF16 && d.dtype == DType::kF32) {
    return copy_t<bf16, float>(s, d, dst_rows, stream);
  }
  throw_runtime("cuda copy", std::string("no conversion ") + std::string(dtype_name(s.dtype)) + " -> " +
                                 std::string(dtype_name(d.dtype)));
}

void add(const Strided& x, const Strided& y, void* stream) {
  require(same_shape(x, y), "add", "shapes differ");
  require(is_float(x.dtype) && is_float(y.dtype), "add", "x and y must be f32 or bf16");
  if (x.dtype == DType::kF32)
    y.dtype == DType::kF32 ? add_t<float, float>(x, y, stream) : add_t<float, bf16>(x, y, stream);
  else
    y.dtype == DType::kF32 ? add_t<bf16, float>(x, y, stream) : add_t<bf16, bf16>(x, y, stream);
}

void scale(const Strided& x, float factor, void* stream) {
  require(is_float(x.dtype), "scale", "x must be f32 or bf16");
  if (x.dtype == DType::kF32)
    launch_strided("scale", x.d0, x.d1, x.d2, ScaleFn<float>{static_cast<float*>(x.data), x.s0, x.s1, factor}, stream);
  else
    launch_strided("scale", x.d0, x.d1, x.d2, ScaleFn<bf16>{static_cast<bf16*>(x.data), x.s0, x.s1, factor}, stream);
}

void embed(const void* table, DType table_t, int64_t ldt, int64_t vocab, const int32_t* ids, void* out, DType out_t,
           int64_t ldo, int n, int hidden, void* stream) {
  require(is_float(table_t) && is_float(out_t), "embed", "table and out must be f32 or bf16");
  if (n <= 0 || hidden <= 0) return;
  require(table && ids && out, "embed", "null operand");
  if (table_t == DType::kF32)
    out_t == DType::kF32 ? embed_t<float, float>(table, ldt, vocab, ids, out, ldo, n, hidden, stream)
                         : embed_t<float, bf16>(table, ldt, vocab, ids, out, ldo, n, hidden, stream);
  else
    out_t == DType::kF32 ? embed_t<bf16, float>(table, ldt, vocab, ids, out, ldo, n, hidden, stream)
                         : embed_t<bf16, bf16>(table, ldt, vocab, ids, out, ldo, n, hidden, stream);
}

void norm(const NormArgs& a, void* stream) {
  require(is_float(a.x_t) && is_float(a.w_t) && is_float(a.y_t), "norm", "x, w and y must be f32 or bf16");
  require(a.rows >= 0 && a.dim > 0 && a.ldx >= a.dim && a.ldy >= a.dim, "norm", "bad shape");
  if (a.rows == 0) return;
  require(a.x && a.w && a.y, "norm", "null operand");
  require(a.rows <= 0x7FFFFFFF, "norm", "too many rows");
  if (a.x_t == DType::kF32)
    norm_w<float>(a, stream);
  else
    norm_w<bf16>(a, stream);
}

void rope_f32(const RopeF32Args& a, void* stream) {
  require(a.tokens >= 0 && a.heads > 0 && a.rope_dim > 0 && a.rope_dim % 2 == 0, "rope_f32", "bad shape");
  if (a.tokens == 0) return;
  require(a.x && a.cos && a.sin && a.positions, "rope_f32", "null operand");
  const int half = a.rope_dim / 2;
  const int64_t total = int64_t{a.tokens} * a.heads * half;
  const int64_t blocks = (total + 255) / 256;
  require(blocks <= 0x7FFFFFFF, "rope_f32", "too many elements");
  rope_f32_kernel<<<static_cast<unsigned>(blocks), 256, 0, cs(stream)>>>(a, half, total);
  IC_CUDA_CHECK_LAUNCH("rope_f32");
}

void gemm_f32(const GemmF32Args& a, void* stream) {
  require(a.m >= 0 && a.n >= 0 && a.k >= 0 && a.batch >= 1 && a.batch <= 65535, "gemm_f32", "bad shape or batch");
  if (a.m == 0 || a.n == 0) return;
  require(a.ldx >= a.k && a.ldw >= a.k && a.ldy >= a.n, "gemm_f32", "leading dimension smaller than the row");
  require(a.x && a.w && a.y, "gemm_f32", "null operand");
  const int64_t gy = (int64_t{a.m} + kTm - 1) / kTm;
  require(gy <= 65535, "gemm_f32", "m too large (" + std::to_string(a.m) + ")");
  const dim3 grid(static_cast<unsigned>((a.n + kTn - 1) / kTn), static_cast<unsigned>(gy),
                  static_cast<unsigned>(a.batch));
  gemm_f32_kernel<<<grid, kGemmThreads, 0, cs(stream)>>>(a);
  IC_CUDA_CHECK_LAUNCH("gemm_f32");
}

void fill_rows(void* y, DType y_t, int64_t ldy, const void* bias, DType bias_t, int rows, int cols, void* stream) {
  require(is_float(y_t) && is_float(bias_t), "fill_rows", "y and bias must be f32 or bf16");
  if (rows <= 0 || cols <= 0) return;
  if (y_t == DType::kF32)
    bias_t == DType::kF32 ? fill_t<float, float>(y, ldy, bias, rows, cols, stream)
                          : fill_t<float, bf16>(y, ldy, bias, rows, cols, stream);
  else
    bias_t == DType::kF32 ? fill_t<bf16, float>(y, ldy, bias, rows, cols, stream)
                          : fill_t<bf16, bf16>(y, ldy, bias, rows, cols, stream);
}

void silu_mul_f32(const float* gate, int64_t lg, const float* up, int64_t lu, float* out, int64_t lo, int rows,
                  int inter, void* stream) {
  launch_strided("silu_mul_f32", 1, rows, inter, SiluFn{gate, lg, up, lu, out, lo}, stream);
}

void gather_rows_f32(const float* x, int64_t ldx, const int32_t* rows, int n, int cols, float* out, int64_t ldo,
                     void* stream) {
  launch_strided("gather_rows_f32", 1, n, cols, GatherFn{x, ldx, rows, out, ldo}, stream);
}

void scatter_add_rows_f32(const float* src, int64_t lds, const int32_t* rows, const float* weights, int n, int cols,
                          float* dst, int64_t ldd, void* stream) {
  launch_strided("scatter_add_rows_f32", 1, n, cols, ScatterAddFn{src, lds, rows, weights, dst, ldd}, stream);
}

void f32_to_bf16(const float* src, void* dst, size_t n, void* stream) {
  if (n == 0) return;
  const size_t blocks = std::min<size_t>((n + 255) / 256, 65535u * 8);
  f32_to_bf16_kernel<<<static_cast<unsigned>(blocks), 256, 0, cs(stream)>>>(src, static_cast<bf16*>(dst), n);
  IC_CUDA_CHECK_LAUNCH("f32_to_bf16");
}

std::string kernels_unavailable_reason() {
  cudaFuncAttributes attr{};
  const cudaError_t e = cudaFuncGetAttributes(&attr, f32_to_bf16_kernel);
  if (e == cudaSuccess) return "";
  cudaGetLastError();
  return cudaGetErrorString(e);
}

}  // namespace indexcache::cuda::bk
