// Small kernels of the GPU model runner (see layer_kernels.h). Norm-type kernels use one block per
// token with a block-wide f32 reduction; elementwise kernels use one thread per element or pair.
#include "gpu/layer_kernels.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <string>
#include <type_traits>

#include "backend/cuda/cuda_check.cuh"
#include "indexcache/error.h"

namespace indexcache::gpu {

namespace {

using bf16 = __nv_bfloat16;

cudaStream_t st(void* s) { return static_cast<cudaStream_t>(s); }

unsigned blocks_for(size_t n, int threads, size_t cap = 65535u * 8) {
  size_t b = (n + threads - 1) / threads;
  if (b > cap) b = cap;
  if (b == 0) b = 1;
  return static_cast<unsigned>(b);
}

__host__ __device__ inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform in [-1, 1) from the top 24 bits of the hash of (seed, tensor, i).
__device__ inline float hash_uniform(uint64_t seed, uint64_t tensor, uint64_t i) {
  const uint64_t h = mix64(mix64(seed * 0x632BE59BD9B4E019ull + tensor) ^ i);
  return static_cast<float>(h >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

// Sum of v over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
__device__ inline float block_sum(float v) {
  __shared__ float part[32];
  __shared__ float total;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // `part` may still be read by a previous call
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x >> 5;
    float s = lane < warps ? part[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

__global__ void fill_uniform_bf16_kernel(bf16* p, size_t n, uint64_t seed, uint64_t tensor, float scale) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    p[i] = __float2bfloat16(scale * hash_uniform(seed, tensor, i));
}
__global__ void fill_uniform_f32_kernel(float* p, size_t n, uint64_t seed, uint64_t tensor, float scale) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    p[i] = scale * hash_uniform(seed, tensor, i);
}
__global__ void fill_const_bf16_kernel(bf16* p, size_t n, float value) {
  const bf16 v = __float2bfloat16(value);
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    p[i] = v;
}

__global__ void set_positions_kernel(int32_t* pos, int32_t* valid, const int32_t* base_dev, int first, int n) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= n) return;
  const int p = first + (base_dev ? *base_dev : 0) + t;
  pos[t] = p;
  if (valid) valid[t] = p + 1;
}
__global__ void advance_kernel(int32_t* p) { *p += 1; }

__host__ __device__ inline int32_t token_at(uint64_t seed, int64_t position, int vocab) {
  return static_cast<int32_t>(mix64(mix64(seed ^ 0x70CE57ull) ^ static_cast<uint64_t>(position)) %
                              static_cast<uint64_t>(vocab));
}

__global__ void embed_kernel(const bf16* embed, float* x, const int32_t* positions, int hidden, int vocab,
                             uint64_t seed) {
  const int t = blockIdx.x;
  const bf16* row = embed + static_cast<int64_t>(token_at(seed, positions[t], vocab)) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x)
    x[static_cast<int64_t>(t) * hidden + i] = __bfloat162float(row[i]);
}

__global__ void embed_ids_kernel(const bf16* embed, float* x, const int32_t* ids, int hidden) {
  const int t = blockIdx.x;
  const bf16* row = embed + static_cast<int64_t>(ids[t]) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x)
    x[static_cast<int64_t>(t) * hidden + i] = __bfloat162float(row[i]);
}

__global__ void rms_norm_kernel(const float* x, int64_t ldx, const bf16* w, bf16* y, int64_t ldy, int dim,
                                float eps) {
  const float* xr = x + blockIdx.x * ldx;
  bf16* yr = y + blockIdx.x * ldy;
  float ss = 0;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  const float inv = rsqrtf(block_sum(ss) / dim + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = __float2bfloat16(xr[i] * inv * __bfloat162float(w[i]));
}

// Pair i of a rope segment: interleaved (2i, 2i+1) or half-split (i, i + half).
__device__ inline void pair_index(RopeLayout layout, int i, int half, int* a, int* b) {
  if (layout == RopeLayout::kInterleaved) {
    *a = 2 * i;
    *b = 2 * i + 1;
  } else {
    *a = i;
    *b = i + half;
  }
}

__global__ void finalize_latent_kernel(const float* tmp, const bf16* w, bf16* cache, const int32_t* positions,
                                       const float* cos, const float* sin, int kvlr, int rd, float eps) {
  const int t = blockIdx.x, lat = kvlr + rd, half = rd / 2;
  const float* x = tmp + static_cast<int64_t>(t) * lat;
  const int64_t p = positions[t];
  bf16* out = cache + p * lat;
  float ss = 0;
  for (int i = threadIdx.x; i < kvlr; i += blockDim.x) ss += x[i] * x[i];
  const float inv = rsqrtf(block_sum(ss) / kvlr + eps);
  for (int i = threadIdx.x; i < kvlr; i += blockDim.x) out[i] = __float2bfloat16(x[i] * inv * __bfloat162float(w[i]));
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float c = cos[p * half + i], s = sin[p * half + i];
    const float x0 = x[kvlr + 2 * i], x1 = x[kvlr + 2 * i + 1];
    out[kvlr + 2 * i] = __float2bfloat16(x0 * c - x1 * s);
    out[kvlr + 2 * i + 1] = __float2bfloat16(x1 * c + x0 * s);
  }
}

__global__ void finalize_index_key_kernel(const float* tmp, const bf16* w, const bf16* b, bf16* cache,
                                          const int32_t* positions, const float* cos, const float* sin, int dim,
                                          int rd, RopeLayout layout, float eps) {
  const int t = blockIdx.x, half = rd / 2;
  const float* x = tmp + static_cast<int64_t>(t) * dim;
  const int64_t p = positions[t];
  bf16* out = cache + p * dim;
  float s1 = 0;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) s1 += x[i];
  const float mean = block_sum(s1) / dim;
  float s2 = 0;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) s2 += (x[i] - mean) * (x[i] - mean);
  const float inv = rsqrtf(block_sum(s2) / dim + eps);
  auto normed = [&](int i) { return (x[i] - mean) * inv * __bfloat162float(w[i]) + __bfloat162float(b[i]); };
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    int a, bb;
    pair_index(layout, i, half, &a, &bb);
    const float c = cos[p * half + i], s = sin[p * half + i];
    const float x0 = normed(a), x1 = normed(bb);
    out[a] = __float2bfloat16(x0 * c - x1 * s);
    out[bb] = __float2bfloat16(x1 * c + x0 * s);
  }
  for (int i = rd + threadIdx.x; i < dim; i += blockDim.x) out[i] = __float2bfloat16(normed(i));
}

__global__ void rope_kernel(RopeArgs a, int half, int64_t total) {
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= total) return;
  const int i = static_cast<int>(idx % half);
  const int h = static_cast<int>((idx / half) % a.heads);
  const int t = static_cast<int>(idx / (int64_t{half} * a.heads));
  const bf16* src = static_cast<const bf16*>(a.src) + t * a.src_token_stride + h * a.src_head_stride;
  bf16* dst = static_cast<bf16*>(a.dst) + t * a.dst_token_stride + h * a.dst_head_stride;
  const int64_t p = a.positions[t];
  int ia, ib;
  pair_index(a.layout, i, half, &ia, &ib);
  const float c = a.cos[p * half + i], s = a.sin[p * half + i];
  const float x0 = __bfloat162float(src[ia]), x1 = __bfloat162float(src[ib]);
  dst[ia] = __float2bfloat16(x0 * c - x1 * s);
  dst[ib] = __float2bfloat16(x1 * c + x0 * s);
}

__global__ void copy_rows_kernel(const bf16* src, int64_t lds, bf16* dst, int64_t ldd, int rows, int cols) {
  const int64_t total = int64_t{rows} * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    dst[r * ldd + c] = src[r * lds + c];
  }
}

__device__ inline float load_f(const bf16* p) { return __bfloat162float(*p); }
__device__ inline float load_f(const float* p) { return *p; }

template <class T>
__global__ void silu_mul_kernel(const T* gu, int64_t ld_gu, bf16* out, int64_t ld_out, int n, int inter) {
  const int64_t total = int64_t{n} * inter;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < total;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = idx / inter, i = idx % inter;
    const float g = load_f(gu + t * ld_gu + i), u = load_f(gu + t * ld_gu + inter + i);
    out[t * ld_out + i] = __float2bfloat16(g / (1.0f + __expf(-g)) * u);
  }
}

constexpr int kMaxExperts = 512, kMaxGroups = 64, kMaxK = 16;

// One warp per token; mirrors route_tokens of the CPU model (src/model/moe.cpp), ties to the lower
// index. The warp computes every expert's sigmoid score once into shared memory (lane e % 32 owns
// expert e), then picks groups and experts with warp arg-max reductions: no long serial loops over
// global memory, which matters in decode where one token is routed per layer.
constexpr int kRouteWarps = 4;
__device__ __forceinline__ bool route_better(float c, int e, float bc, int be) {
  return e >= 0 && (be < 0 || c > bc || (c == bc && e < be));
}
__global__ void __launch_bounds__(kRouteWarps * 32) route_kernel(RouteArgs a) {
  __shared__ float sig_s[kRouteWarps][kMaxExperts];
  __shared__ float cho_s[kRouteWarps][kMaxExperts];
  __shared__ float gs_s[kRouteWarps][kMaxGroups];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int t = blockIdx.x * kRouteWarps + warp;
  if (t >= a.n) return;  // warp-uniform
  const int E = a.experts, G = a.groups, per = E / G;
  const float* lg = a.logits + static_cast<int64_t>(t) * E;
  float* sig = sig_s[warp];
  float* cho = cho_s[warp];
  float* gscore = gs_s[warp];
  const float neg_inf = -__int_as_float(0x7f800000);
  for (int e = lane; e < E; e += 32) {
    const float sg = 1.0f / (1.0f + expf(-lg[e]));
    sig[e] = sg;
    cho[e] = sg + a.bias[e];
  }
  __syncwarp();
  for (int g = lane; g < G; g += 32) {
    float best = neg_inf, second = neg_inf;
    for (int e = g * per; e < (g + 1) * per; ++e) {
      const float c = cho[e];
      if (c > best) {
        second = best;
        best = c;
      } else if (c > second) {
        second = c;
      }
    }
    gscore[g] = best + second;
  }
  __syncwarp();
  uint64_t allowed = 0;  // bit g: group g kept (the same on every lane)
  if (G == 1) {
    allowed = 1;
  } else {
    for (int r = 0; r < a.topk_group; ++r) {
      int bg = -1;
      float bv = 0;
      for (int g = lane; g < G; g += 32)
        if (!((allowed >> g) & 1) && route_better(gscore[g], g, bv, bg)) {
          bg = g;
          bv = gscore[g];
        }
      for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int og = __shfl_xor_sync(0xffffffffu, bg, o);
        if (route_better(ov, og, bv, bg)) {
          bv = ov;
          bg = og;
        }
      }
      allowed |= uint64_t{1} << bg;
    }
  }
  uint32_t taken = 0;  // bit j: expert lane + 32 * j already chosen
  float sum = 0;
  float score[kMaxK];
  int chosen[kMaxK];
  for (int r = 0; r < a.k; ++r) {
    int be = -1;
    float bc = 0;
    for (int e = lane, j = 0; e < E; e += 32, ++j) {
      if (!((allowed >> (e / per)) & 1) || ((taken >> j) & 1)) continue;
      if (route_better(cho[e], e, bc, be)) {
        be = e;
        bc = cho[e];
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float oc = __shfl_xor_sync(0xffffffffu, bc, o);
      const int oe = __shfl_xor_sync(0xffffffffu, be, o);
      if (route_better(oc, oe, bc, be)) {
        bc = oc;
        be = oe;
      }
    }
    if ((be & 31) == lane) taken |= 1u << (be >> 5);
    chosen[r] = be;
    score[r] = sig[be];
    sum += score[r];
  }
  if (lane == 0) {
    for (int r = 0; r < a.k; ++r) {
      float w = score[r];
      if (a.norm_topk_prob) w /= (sum + 1e-20f);
      a.chosen[static_cast<int64_t>(t) * a.k + r] = chosen[r];
      a.weights[static_cast<int64_t>(t) * a.k + r] = w * a.scaling;
    }
  }
}

__global__ void moe_count_kernel(const int32_t* chosen, int pairs, int32_t* counts) {
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p < pairs) atomicAdd(&counts[chosen[p]], 1);
}
__global__ void moe_scan_kernel(const int32_t* counts, int experts, int32_t* offsets, int32_t* cursor) {
  if (threadIdx.x != 0) return;
  int32_t run = 0;
  for (int e = 0; e < experts; ++e) {
    offsets[e] = run;
    cursor[e] = run;
    run += counts[e];
  }
  offsets[experts] = run;
}
__global__ void moe_assign_kernel(const int32_t* chosen, int pairs, int k, int32_t* cursor, int32_t* slot,
                                  int32_t* slot_token) {
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= pairs) return;
  const int32_t row = atomicAdd(&cursor[chosen[p]], 1);
  slot[p] = row;
  slot_token[row] = p / k;
}

__global__ void moe_gather_scalar_kernel(const bf16* x, const int32_t* slot_token, int hidden, bf16* xe) {
  const int row = blockIdx.x;
  const bf16* src = x + static_cast<int64_t>(slot_token[row]) * hidden;
  bf16* dst = xe + static_cast<int64_t>(row) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = src[i];
}

__global__ void moe_gather_kernel(const uint4* x, const int32_t* slot_token, int hidden_vec, uint4* xe) {
  const int row = blockIdx.x;
  const uint4* src = x + static_cast<int64_t>(slot_token[row]) * hidden_vec;
  uint4* dst = xe + static_cast<int64_t>(row) * hidden_vec;
  for (int i = threadIdx.x; i < hidden_vec; i += blockDim.x) dst[i] = src[i];
}

template <class T>
__global__ void moe_combine_kernel(const T* ye, const int32_t* slot, const float* weights, int k, int hidden,
                                   float* x) {
  const int t = blockIdx.x;
  for (int d = threadIdx.x; d < hidden; d += blockDim.x) {
    float acc = 0;
    for (int i = 0; i < k; ++i) {
      const int64_t p = static_cast<int64_t>(t) * k + i;
      const int64_t row = slot ? slot[p] : p;
      acc += weights[p] * load_f(ye + row * hidden + d);
    }
    x[static_cast<int64_t>(t) * hidden + d] += acc;
  }
}

// One warp per output row, 16-byte loads (8 bf16) of the weight row and the input vector; each lane
// issues all its loads of a 4-vector group before using them, so a warp keeps 2 KB of the weight in
// flight. Deterministic: a fixed per-lane order, then a fixed butterfly reduction.
constexpr int kGemvWarps = 8;
template <class Out>
__global__ void __launch_bounds__(kGemvWarps * 32) gemv_kernel(GemvArgs a) {
  const int b = blockIdx.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kGemvWarps + warp;
  if (r >= a.rows) return;
  const int64_t which = a.ids ? a.ids[b] : b;
  const uint4* wr = reinterpret_cast<const uint4*>(static_cast<const bf16*>(a.w) + which * a.w_batch_stride +
                                                   r * a.ldw);
  const uint4* xv = reinterpret_cast<const uint4*>(static_cast<const bf16*>(a.x) + b * a.x_batch_stride);
  const int vecs = a.cols / 8;
  float acc = 0;
  for (int v0 = 0; v0 < vecs; v0 += 4 * 32) {
    uint4 wa[4], xa[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int v = v0 + u * 32 + lane;
      if (v < vecs) {
        wa[u] = __ldg(wr + v);
        xa[u] = __ldg(xv + v);
      } else {
        wa[u] = make_uint4(0, 0, 0, 0);
        xa[u] = make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const __nv_bfloat162* w2 = reinterpret_cast<const __nv_bfloat162*>(&wa[u]);
      const __nv_bfloat162* x2 = reinterpret_cast<const __nv_bfloat162*>(&xa[u]);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 wf = __bfloat1622float2(w2[j]), xf = __bfloat1622float2(x2[j]);
        acc += wf.x * xf.x + wf.y * xf.y;
      }
    }
  }
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) {
    Out* y = static_cast<Out*>(a.y) + b * a.y_batch_stride + r;
    float v = a.alpha * acc;
    if (a.beta != 0.0f) v += a.beta * load_f(y);
    if constexpr (std::is_same_v<Out, float>)
      *y = v;
    else
      *y = __float2bfloat16(v);
  }
}

int norm_threads(int dim) {
  int t = 32;
  while (t < dim && t < 512) t *= 2;
  return t;
}

void require(bool ok, const char* what, const std::string& why) {
  if (!ok) throw_runtime(what, why);
}

}  // namespace

int32_t synthetic_token(uint64_t seed, int64_t position, int vocab) { return token_at(seed, position, vocab); }

void fill_uniform_bf16(void* p, size_t n, uint64_t seed, uint64_t tensor, float scale, void* stream) {
  if (n == 0) return;
  fill_uniform_bf16_kernel<<<blocks_for(n, 256), 256, 0, st(stream)>>>(static_cast<bf16*>(p), n, seed, tensor, scale);
  IC_CUDA_CHECK_LAUNCH("fill_uniform_bf16");
}
void fill_uniform_f32(float* p, size_t n, uint64_t seed, uint64_t tensor, float scale, void* stream) {
  if (n == 0) return;
  fill_uniform_f32_kernel<<<blocks_for(n, 256), 256, 0, st(stream)>>>(p, n, seed, tensor, scale);
  IC_CUDA_CHECK_LAUNCH("fill_uniform_f32");
}
void fill_const_bf16(void* p, size_t n, float value, void* stream) {
  if (n == 0) return;
  fill_const_bf16_kernel<<<blocks_for(n, 256), 256, 0, st(stream)>>>(static_cast<bf16*>(p), n, value);
  IC_CUDA_CHECK_LAUNCH("fill_const_bf16");
}

void set_positions(int32_t* positions, int32_t* valid, const int32_t* base_dev, int first, int n, void* stream) {
  require(n > 0, "set_positions", "no tokens");
  set_positions_kernel<<<blocks_for(n, 256), 256, 0, st(stream)>>>(positions, valid, base_dev, first, n);
  IC_CUDA_CHECK_LAUNCH("set_positions");
}
void advance_position(int32_t* p, void* stream) {
  advance_kernel<<<1, 1, 0, st(stream)>>>(p);
  IC_CUDA_CHECK_LAUNCH("advance_position");
}
void embed_tokens(const void* embed, float* x, const int32_t* positions, int n, int hidden, int vocab,
                  uint64_t seed, void* stream) {
  require(n > 0 && hidden > 0 && vocab > 0, "embed_tokens", "empty shape");
  embed_kernel<<<n, 256, 0, st(stream)>>>(static_cast<const bf16*>(embed), x, positions, hidden, vocab, seed);
  IC_CUDA_CHECK_LAUNCH("embed_tokens");
}

void embed_ids(const void* embed, float* x, const int32_t* ids, int n, int hidden, void* stream) {
  require(n > 0 && hidden > 0, "embed_ids", "empty");
  embed_ids_kernel<<<n, 256, 0, st(stream)>>>(static_cast<const bf16*>(embed), x, ids, hidden);
  IC_CUDA_CHECK_LAUNCH("embed_ids");
}

void rms_norm(const float* x, int64_t ldx, const void* w, void* y, int64_t ldy, int n, int dim, float eps,
              void* stream) {
  require(n > 0 && dim > 0 && ldx >= dim && ldy >= dim, "rms_norm", "bad shape");
  rms_norm_kernel<<<n, norm_threads(dim), 0, st(stream)>>>(x, ldx, static_cast<const bf16*>(w), static_cast<bf16*>(y),
                                                           ldy, dim, eps);
  IC_CUDA_CHECK_LAUNCH("rms_norm");
}

void finalize_latent(const float* tmp, const void* w, void* cache, const int32_t* positions, const float* cos,
                     const float* sin, int n, int kvlr, int rd, float eps, void* stream) {
  require(n > 0 && kvlr > 0 && rd > 0 && rd % 2 == 0, "finalize_latent", "bad shape");
  finalize_latent_kernel<<<n, norm_threads(kvlr), 0, st(stream)>>>(tmp, static_cast<const bf16*>(w),
                                                                   static_cast<bf16*>(cache), positions, cos, sin,
                                                                   kvlr, rd, eps);
  IC_CUDA_CHECK_LAUNCH("finalize_latent");
}

void finalize_index_key(const float* tmp, const void* w, const void* b, void* cache, const int32_t* positions,
                        const float* cos, const float* sin, int n, int dim, int rd, RopeLayout layout, float eps,
                        void* stream) {
  require(n > 0 && dim > 0 && rd > 0 && rd % 2 == 0 && rd <= dim, "finalize_index_key", "bad shape");
  finalize_index_key_kernel<<<n, norm_threads(dim), 0, st(stream)>>>(
      tmp, static_cast<const bf16*>(w), static_cast<const bf16*>(b), static_cast<bf16*>(cache), positions, cos, sin,
      dim, rd, layout, eps);
  IC_CUDA_CHECK_LAUNCH("finalize_index_key");
}

void rope_bf16(const RopeArgs& a, void* stream) {
  require(a.tokens > 0 && a.heads > 0 && a.rope_dim > 0 && a.rope_dim % 2 == 0, "rope_bf16", "bad shape");
  const int half = a.rope_dim / 2;
  const int64_t total = int64_t{a.tokens} * a.heads * half;
  rope_kernel<<<blocks_for(total, 256, 1u << 30), 256, 0, st(stream)>>>(a, half, total);
  IC_CUDA_CHECK_LAUNCH("rope_bf16");
}

void copy_rows_bf16(const void* src, int64_t lds, void* dst, int64_t ldd, int rows, int cols, void* stream) {
  require(rows > 0 && cols > 0, "copy_rows_bf16", "empty");
  copy_rows_kernel<<<blocks_for(size_t(rows) * cols, 256), 256, 0, st(stream)>>>(
      static_cast<const bf16*>(src), lds, static_cast<bf16*>(dst), ldd, rows, cols);
  IC_CUDA_CHECK_LAUNCH("copy_rows_bf16");
}

void silu_mul_bf16(const void* gu, int64_t ld_gu, void* out, int64_t ld_out, int n, int inter, void* stream) {
  require(n > 0 && inter > 0, "silu_mul", "empty");
  silu_mul_kernel<bf16><<<blocks_for(size_t(n) * inter, 256), 256, 0, st(stream)>>>(
      static_cast<const bf16*>(gu), ld_gu, static_cast<bf16*>(out), ld_out, n, inter);
  IC_CUDA_CHECK_LAUNCH("silu_mul_bf16");
}
void silu_mul_f32(const float* gu, int64_t ld_gu, void* out, int64_t ld_out, int n, int inter, void* stream) {
  require(n > 0 && inter > 0, "silu_mul", "empty");
  silu_mul_kernel<float><<<blocks_for(size_t(n) * inter, 256), 256, 0, st(stream)>>>(gu, ld_gu, static_cast<bf16*>(out),
                                                                                     ld_out, n, inter);
  IC_CUDA_CHECK_LAUNCH("silu_mul_f32");
}

void route_experts(const RouteArgs& a, void* stream) {
  require(a.n > 0 && a.experts > 0 && a.experts <= kMaxExperts && a.k > 0 && a.k <= kMaxK && a.groups > 0 &&
              a.groups <= kMaxGroups && a.experts % a.groups == 0 && a.topk_group >= 1 &&
              a.topk_group <= a.groups && a.k <= a.topk_group * (a.experts / a.groups),
          "route_experts",
          "unsupported routing (experts " + std::to_string(a.experts) + ", groups " + std::to_string(a.groups) +
              ", topk_group " + std::to_string(a.topk_group) + ", k " + std::to_string(a.k) + ")");
  route_kernel<<<blocks_for(a.n, kRouteWarps), kRouteWarps * 32, 0, st(stream)>>>(a);
  IC_CUDA_CHECK_LAUNCH("route_experts");
}

void moe_dispatch(const int32_t* chosen, int pairs, int k, int experts, int32_t* counts, int32_t* offsets,
                  int32_t* scratch, int32_t* slot, int32_t* slot_token, void* stream) {
  require(pairs > 0 && k > 0 && experts > 0, "moe_dispatch", "empty");
  IC_CUDA_CHECK(cudaMemsetAsync(counts, 0, sizeof(int32_t) * experts, st(stream)));
  moe_count_kernel<<<blocks_for(pairs, 256), 256, 0, st(stream)>>>(chosen, pairs, counts);
  moe_scan_kernel<<<1, 32, 0, st(stream)>>>(counts, experts, offsets, scratch);
  moe_assign_kernel<<<blocks_for(pairs, 256), 256, 0, st(stream)>>>(chosen, pairs, k, scratch, slot, slot_token);
  IC_CUDA_CHECK_LAUNCH("moe_dispatch");
}

void moe_gather(const void* x, const int32_t* slot_token, int rows, int hidden, void* xe, void* stream) {
  require(rows > 0 && hidden > 0, "moe_gather", "empty");
  const bool vec = hidden % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(xe) % 16 == 0;
  if (vec)
    moe_gather_kernel<<<rows, 128, 0, st(stream)>>>(static_cast<const uint4*>(x), slot_token, hidden / 8,
                                                    static_cast<uint4*>(xe));
  else
    moe_gather_scalar_kernel<<<rows, 128, 0, st(stream)>>>(static_cast<const bf16*>(x), slot_token, hidden,
                                                           static_cast<bf16*>(xe));
  IC_CUDA_CHECK_LAUNCH("moe_gather");
}

void moe_combine(const void* ye, bool ye_f32, const int32_t* slot, const float* weights, int n, int k, int hidden,
                 float* x, void* stream) {
  require(n > 0 && k > 0 && hidden > 0, "moe_combine", "empty");
  if (ye_f32)
    moe_combine_kernel<float><<<n, 256, 0, st(stream)>>>(static_cast<const float*>(ye), slot, weights, k, hidden, x);
  else
    moe_combine_kernel<bf16><<<n, 256, 0, st(stream)>>>(static_cast<const bf16*>(ye), slot, weights, k, hidden, x);
  IC_CUDA_CHECK_LAUNCH("moe_combine");
}

bool gemv_supported(const GemvArgs& a) {
  auto al16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return a.batch > 0 && a.batch <= 65535 && a.rows > 0 && a.cols > 0 && a.cols % 8 == 0 && a.ldw % 8 == 0 &&
         a.ldw >= a.cols && a.w_batch_stride % 8 == 0 && a.x_batch_stride % 8 == 0 && a.w && a.x && a.y &&
         al16(a.w) && al16(a.x) && (a.rows + kGemvWarps - 1) / kGemvWarps <= 0x7FFFFFFF;
}

void gemv(const GemvArgs& a, void* stream) {
  require(gemv_supported(a), "gemv",
          "cols, ldw and strides must be multiples of 8 elements, pointers 16-byte aligned, batch <= 65535");
  const dim3 grid(static_cast<unsigned>((a.rows + kGemvWarps - 1) / kGemvWarps), a.batch);
  if (a.y_f32)
    gemv_kernel<float><<<grid, kGemvWarps * 32, 0, st(stream)>>>(a);
  else
    gemv_kernel<bf16><<<grid, kGemvWarps * 32, 0, st(stream)>>>(a);
  IC_CUDA_CHECK_LAUNCH("gemv");
}

void gemv_bf16(const void* w, int64_t w_batch_stride, const int32_t* ids, const void* x, int64_t x_batch_stride,
               float* y, int64_t y_batch_stride, int batch, int rows, int cols, void* stream) {
  GemvArgs a;
  a.w = w;
  a.ldw = cols;
  a.w_batch_stride = w_batch_stride;
  a.ids = ids;
  a.x = x;
  a.x_batch_stride = x_batch_stride;
  a.y = y;
  a.y_f32 = true;
  a.y_batch_stride = y_batch_stride;
  a.batch = batch;
  a.rows = rows;
  a.cols = cols;
  gemv(a, stream);
}

}  // namespace indexcache::gpu
