// Lightning-indexer scores on the GPU, f32 on CUDA cores (no tensor cores yet):
//   scores[t, s] = scale * sum_h w[t, h] * ReLU(q[t, h, :] . k[s, :])   for s <= positions[t], else -inf.
// One block computes a tile of kTQ queries x kTK keys. The key tile is staged in shared memory once
// and reused by every head; per head, the tile's queries are staged, each thread forms 2 x 4 dot
// products in registers and folds them straight into its ReLU-weighted sums, so per-head logits
// never reach device memory. Tiles wholly in the future of every query in the tile only write -inf.
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/cuda_ops.h"

namespace indexcache::cuda {

namespace {

constexpr int kTQ = 32;       // queries per block
constexpr int kTK = 64;       // keys per block
constexpr int kThreads = 256;  // 16 x 16: thread (ty, tx) owns queries ty, ty+16 and keys tx+16*i
constexpr int kMaxDim = 256;

__global__ void __launch_bounds__(kThreads)
indexer_kernel(const float* __restrict__ q, const float* __restrict__ w, const float* __restrict__ k,
               const int32_t* __restrict__ positions, float* __restrict__ scores,
               int64_t scores_stride, int tokens, int keys, int heads, int dim, float scale) {
  extern __shared__ float smem[];
  const int ld = dim + 1;  // padded row: consecutive keys land in different banks
  float* ks = smem;             // [kTK][ld]
  float* qs = smem + kTK * ld;  // [kTQ][ld]
  __shared__ int tile_max_pos;

  const int t0 = blockIdx.y * kTQ;
  const int s0 = blockIdx.x * kTK;
  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;
  const float neg_inf = -INFINITY;

  if (tid == 0) tile_max_pos = -1;
  __syncthreads();
  if (tid < kTQ && t0 + tid < tokens) atomicMax(&tile_max_pos, positions[t0 + tid]);
  __syncthreads();

  if (s0 > tile_max_pos) {  // every key of the tile is in the future of every query
    for (int i = tid; i < kTQ * kTK; i += kThreads) {
      const int t = t0 + i / kTK, s = s0 + i % kTK;
      if (t < tokens && s < keys) scores[t * scores_stride + s] = neg_inf;
    }
    return;
  }

  for (int i = tid; i < kTK * dim; i += kThreads) {
    const int r = i / dim, d = i % dim;
    const int s = s0 + r;
    ks[r * ld + d] = s < keys ? k[static_cast<int64_t>(s) * dim + d] : 0.0f;
  }

  float acc[2][4] = {};
  for (int h = 0; h < heads; ++h) {
    __syncthreads();  // previous head's qs reads are done (and ks is written, on the first pass)
    for (int i = tid; i < kTQ * dim; i += kThreads) {
      const int r = i / dim, d = i % dim;
      const int t = t0 + r;
      qs[r * ld + d] = t < tokens ? q[(static_cast<int64_t>(t) * heads + h) * dim + d] : 0.0f;
    }
    __syncthreads();
    float dot[2][4] = {};
    const float* qa = qs + ty * ld;
    const float* qb = qs + (ty + 16) * ld;
    const float* kb = ks + tx * ld;
#pragma unroll 4
    for (int d = 0; d < dim; ++d) {
      const float a = qa[d], b = qb[d];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float kv = kb[j * 16 * ld + d];
        dot[0][j] = fmaf(a, kv, dot[0][j]);
        dot[1][j] = fmaf(b, kv, dot[1][j]);
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int t = t0 + ty + 16 * i;
      const float wh = t < tokens ? w[static_cast<int64_t>(t) * heads + h] : 0.0f;
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(wh, fmaxf(dot[i][j], 0.0f), acc[i][j]);
    }
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int t = t0 + ty + 16 * i;
    if (t >= tokens) continue;
    const int pos = positions[t];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int s = s0 + tx + 16 * j;
      if (s < keys) scores[t * scores_stride + s] = s <= pos ? acc[i][j] * scale : neg_inf;
    }
  }
}

}  // namespace

void indexer_scores(const IndexerScoreParams& p, void* stream) {
  if (p.tokens <= 0 || p.keys <= 0) return;
  if (p.head_dim <= 0 || p.head_dim > kMaxDim || p.heads <= 0)
    throw_runtime("cuda indexer_scores", "head_dim must be in 1.." + std::to_string(kMaxDim) +
                                             " and heads >= 1 (got head_dim " +
                                             std::to_string(p.head_dim) + ", heads " +
                                             std::to_string(p.heads) + ")");
  const size_t smem = static_cast<size_t>(kTK + kTQ) * (p.head_dim + 1) * sizeof(float);
  // Above 48 KB a block needs the raised limit; cheap to set on every call (and per device).
  IC_CUDA_CHECK(cudaFuncSetAttribute(indexer_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(smem)));
  const dim3 grid((p.keys + kTK - 1) / kTK, (p.tokens + kTQ - 1) / kTQ);
  indexer_kernel<<<grid, kThreads, smem, static_cast<cudaStream_t>(stream)>>>(
      p.q, p.w, p.k, p.positions, p.scores, p.scores_stride, p.tokens, p.keys, p.heads, p.head_dim,
      p.scale);
  IC_CUDA_CHECK_LAUNCH("indexer_scores launch");
}

}  // namespace indexcache::cuda
