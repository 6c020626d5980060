// Generic-shape DSA kernels (see dsa_generic.h). One warp per key for the indexer, one block per
// (query token, head) for the sparse attention (logits of the whole selection staged in shared
// memory, then an exact softmax), and a 16 x 16 shared-memory tiled GEMM.
#include "backend/cuda/dsa_generic.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "backend/cuda/cuda_check.cuh"
#include "indexcache/error.h"

namespace indexcache::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr size_t kSmemLimit = 48 * 1024;
constexpr int kIndexerThreads = 256;  // 8 warps, one key each at a time
constexpr int kMlaThreads = 128;
constexpr int kGridYMax = 65535;

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Max / sum over the block (blockDim.x a multiple of 32); every thread gets the result. `part`
// holds 32 floats of shared scratch; the leading __syncthreads protects it from a previous call.
template <bool kMax>
__device__ inline float block_reduce(float v, float* part) {
  for (int o = 16; o > 0; o >>= 1) {
    const float u = __shfl_xor_sync(0xffffffffu, v, o);
    v = kMax ? fmaxf(v, u) : v + u;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  float r = kMax ? -INFINITY : 0.0f;
  for (int i = 0; i < warps; ++i) r = kMax ? fmaxf(r, part[i]) : r + part[i];
  return r;
}

__global__ void indexer_generic_kernel(IndexerBf16Params p) {
  extern __shared__ float smem[];
  float* qs = smem;                         // [heads * head_dim]
  float* ws = smem + p.heads * p.head_dim;  // [heads]
  const int hd = p.head_dim, nq = p.heads * hd;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const bf16* kbase = static_cast<const bf16*>(p.k);
  for (int t = blockIdx.y; t < p.tokens; t += gridDim.y) {
    __syncthreads();  // the previous token's q / w are no longer read
    const bf16* q = static_cast<const bf16*>(p.q) + static_cast<int64_t>(t) * nq;
    for (int i = threadIdx.x; i < nq; i += blockDim.x) qs[i] = __bfloat162float(q[i]);
    for (int i = threadIdx.x; i < p.heads; i += blockDim.x) ws[i] = p.w[static_cast<int64_t>(t) * p.heads + i];
    __syncthreads();
    const int pos = p.positions[t];
    float* row = p.scores + static_cast<int64_t>(t) * p.scores_stride;
    for (int s = blockIdx.x * warps + warp; s < p.keys; s += gridDim.x * warps) {  // warp-uniform
      if (s > pos) {
        if (lane == 0) row[s] = -INFINITY;
        continue;
      }
      const bf16* kr = kbase + static_cast<int64_t>(s) * hd;
      float total = 0.0f;
      for (int h = 0; h < p.heads; ++h) {
        float d = 0.0f;
        for (int i = lane; i < hd; i += 32) d += qs[h * hd + i] * __bfloat162float(kr[i]);
        d = warp_sum(d);
        total += ws[h] * fmaxf(d, 0.0f);
      }
      if (lane == 0) row[s] = total * p.scale;
    }
  }
}

__global__ void sparse_mla_generic_kernel(SparseMlaParams p) {
  extern __shared__ float smem[];
  __shared__ float part[32];
  float* qs = smem;                                                // [dim_k]
  float* ls = smem + p.dim_k;                                      // [num_selected] logits, then weights
  int* is = reinterpret_cast<int*>(smem + p.dim_k + p.num_selected);  // [num_selected]
  const int h = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const bf16* kv = static_cast<const bf16*>(p.kv);
  for (int t = blockIdx.y; t < p.tokens; t += gridDim.y) {
    __syncthreads();  // the previous token's staging is no longer read
    const bf16* q = static_cast<const bf16*>(p.q) + (static_cast<int64_t>(t) * p.heads + h) * p.dim_k;
    for (int i = threadIdx.x; i < p.dim_k; i += blockDim.x) qs[i] = __bfloat162float(q[i]);
    const int32_t* idx = p.indices + static_cast<int64_t>(t) * p.num_selected;
    for (int j = threadIdx.x; j < p.num_selected; j += blockDim.x) is[j] = idx[j];
    __syncthreads();
    for (int j = warp; j < p.num_selected; j += warps) {  // warp-uniform
      const int id = is[j];
      if (id < 0) {
        if (lane == 0) ls[j] = -INFINITY;
        continue;
      }
      const bf16* kr = kv + static_cast<int64_t>(id) * p.kv_stride;
      float d = 0.0f;
      for (int i = lane; i < p.dim_k; i += 32) d += qs[i] * __bfloat162float(kr[i]);
      d = warp_sum(d);
      if (lane == 0) ls[j] = d * p.scale;
    }
    __syncthreads();
    float m = -INFINITY;
    for (int j = threadIdx.x; j < p.num_selected; j += blockDim.x) m = fmaxf(m, ls[j]);
    m = block_reduce<true>(m, part);
    bf16* out = static_cast<bf16*>(p.out) + (static_cast<int64_t>(t) * p.heads + h) * p.dim_v;
    if (m == -INFINITY) {  // nothing selected (uniform across the block)
      for (int d = threadIdx.x; d < p.dim_v; d += blockDim.x) out[d] = __float2bfloat16(0.0f);
      if (p.lse && threadIdx.x == 0) p.lse[static_cast<int64_t>(t) * p.heads + h] = -INFINITY;
      continue;
    }
    float sum = 0.0f;
    for (int j = threadIdx.x; j < p.num_selected; j += blockDim.x) {
      const float e = is[j] < 0 ? 0.0f : expf(ls[j] - m);
      ls[j] = e;
      sum += e;
    }
    sum = block_reduce<false>(sum, part);  // its barriers also publish the weights in ls
    const float inv = 1.0f / sum;
    for (int d = threadIdx.x; d < p.dim_v; d += blockDim.x) {
      float acc = 0.0f;
      for (int j = 0; j < p.num_selected; ++j) {
        const int id = is[j];
        if (id >= 0) acc += ls[j] * __bfloat162float(kv[static_cast<int64_t>(id) * p.kv_stride + d]);
      }
      out[d] = __float2bfloat16(acc * inv);
    }
    if (p.lse && threadIdx.x == 0) p.lse[static_cast<int64_t>(t) * p.heads + h] = m + logf(sum);
  }
}

constexpr int kTile = 16;

__global__ void gemm_generic_kernel(GenericGemmParams p) {
  __shared__ float xs[kTile][kTile + 1];
  __shared__ float wsh[kTile][kTile + 1];
  const int b = blockIdx.z;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int row = blockIdx.y * kTile + ty;  // m
  const int col = blockIdx.x * kTile + tx;  // n
  const bf16* x = static_cast<const bf16*>(p.x) + b * p.x_batch_stride;
  const bf16* w = static_cast<const bf16*>(p.w) + b * p.w_batch_stride;
  const int wrow = blockIdx.x * kTile + ty;  // the w row this thread stages
  float acc = 0.0f;
  for (int k0 = 0; k0 < p.k; k0 += kTile) {
    const int kk = k0 + tx;
    xs[ty][tx] = (row < p.m && kk < p.k) ? __bfloat162float(x[static_cast<int64_t>(row) * p.ldx + kk]) : 0.0f;
    wsh[ty][tx] = (wrow < p.n && kk < p.k) ? __bfloat162float(w[static_cast<int64_t>(wrow) * p.ldw + kk]) : 0.0f;
    __syncthreads();
    for (int i = 0; i < kTile; ++i) acc += xs[ty][i] * wsh[tx][i];
    __syncthreads();
  }
  if (row >= p.m || col >= p.n) return;
  const int64_t off = b * p.y_batch_stride + static_cast<int64_t>(row) * p.ldy + col;
  float v = p.alpha * acc;
  if (p.y_f32) {
    float* y = static_cast<float*>(p.y) + off;
    if (p.beta != 0.0f) v += p.beta * *y;
    *y = v;
  } else {
    bf16* y = static_cast<bf16*>(p.y) + off;
    if (p.beta != 0.0f) v += p.beta * __bfloat162float(*y);
    *y = __float2bfloat16(v);
  }
}

void require(bool ok, const char* what, const std::string& why) {
  if (!ok) throw_runtime(what, why);
}

}  // namespace

void indexer_scores_generic(const IndexerBf16Params& p, void* stream) {
  const char* what = "indexer_scores_generic";
  require(p.tokens >= 0 && p.keys >= 0 && p.heads > 0 && p.head_dim > 0, what, "bad shape");
  const size_t smem = static_cast<size_t>(p.heads) * (p.head_dim + 1) * sizeof(float);
  require(smem <= kSmemLimit, what, "heads * (head_dim + 1) too large for shared memory");
  require(p.scores_stride >= p.keys, what, "scores_stride < keys");
  if (p.tokens == 0 || p.keys == 0) return;
  require(p.q && p.k && p.w && p.positions && p.scores, what, "null pointer");
  const int warps = kIndexerThreads / 32;
  const int key_blocks = std::min((p.keys + warps - 1) / warps, 4096);
  const dim3 grid(static_cast<unsigned>(key_blocks), static_cast<unsigned>(std::min(p.tokens, kGridYMax)));
  indexer_generic_kernel<<<grid, kIndexerThreads, smem, static_cast<cudaStream_t>(stream)>>>(p);
  IC_CUDA_CHECK_LAUNCH(what);
}

void sparse_mla_generic(const SparseMlaParams& p, void* stream) {
  const char* what = "sparse_mla_generic";
  require(p.tokens >= 0 && p.heads > 0 && p.heads <= kGridYMax && p.dim_k > 0 && p.dim_v > 0 &&
              p.dim_v <= p.dim_k && p.kv_stride >= p.dim_k && p.num_selected >= 0,
          what, "bad shape (need dim_v <= dim_k <= kv_stride)");
  require(std::isfinite(p.scale), what, "scale must be finite");
  const size_t smem = (static_cast<size_t>(p.dim_k) + 2 * static_cast<size_t>(p.num_selected)) * 4;
  require(smem <= kSmemLimit, what, "dim_k + 2 * num_selected too large for shared memory");
  if (p.tokens == 0) return;
  require(p.q && p.kv && p.out && (p.indices || p.num_selected == 0), what, "null pointer");
  const dim3 grid(static_cast<unsigned>(p.heads), static_cast<unsigned>(std::min(p.tokens, kGridYMax)));
  sparse_mla_generic_kernel<<<grid, kMlaThreads, smem, static_cast<cudaStream_t>(stream)>>>(p);
  IC_CUDA_CHECK_LAUNCH(what);
}

void gemm_generic(const GenericGemmParams& p, void* stream) {
  const char* what = "gemm_generic";
  require(p.m > 0 && p.n > 0 && p.k > 0 && p.batch > 0 && p.batch <= kGridYMax, what, "empty shape or batch > 65535");
  require(p.ldx >= p.k && p.ldw >= p.k && p.ldy >= p.n, what, "leading dimension smaller than the row");
  require(p.x && p.w && p.y, what, "null pointer");
  require((p.m + kTile - 1) / kTile <= kGridYMax, what, "m too large");
  const dim3 grid(static_cast<unsigned>((p.n + kTile - 1) / kTile), static_cast<unsigned>((p.m + kTile - 1) / kTile),
                  static_cast<unsigned>(p.batch));
  gemm_generic_kernel<<<grid, dim3(kTile, kTile), 0, static_cast<cudaStream_t>(stream)>>>(p);
  IC_CUDA_CHECK_LAUNCH(what);
}

}  // namespace indexcache::cuda
