// Epilogue pieces the lightning-indexer kernels share (indexer_bf16.cu, indexer_fp8.cu,
// indexer_wgmma.cu). Include from .cu files only.
#pragma once

#include <cstdint>

#include "backend/cuda/device_helpers.cuh"

namespace indexcache::cuda {
namespace {

// The mma.sync kernels' per-warp partial sums of one key tile: relu(acc) times the row weight,
// summed over the rows the thread holds that belong to one query, then reduce-scattered over the 8
// lanes that share a column pair; written to `part` rows of kN floats (one per warp when a warp's
// 32 rows are one query, kWarpOneQuery; else one per 8-row group).
// acc[mi][ni][hf * 2 + e]: row warp_m*32 + mi*16 + hf*8 + g, key column ni*8 + t4*2 + e; wr[mi][hf]
// the weights of those rows.
template <bool kWarpOneQuery, int kN>
__device__ __forceinline__ void store_warp_partials(const float (&acc)[2][8][4], const float (&wr)[2][2], int warp_m,
                                                    int warp_n, int lane, float* part) {
  const int col =
      warp_n * 64 + ((lane >> 4) & 1) * 32 + ((lane >> 3) & 1) * 16 + ((lane >> 2) & 1) * 8 + (lane & 3) * 2;
  if constexpr (kWarpOneQuery) {
    float v[16];
#pragma unroll
    for (int ni = 0; ni < 8; ++ni)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float s = 0.0f;
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) s = fmaf(wr[mi][hf], fmaxf(acc[mi][ni][hf * 2 + e], 0.0f), s);
        v[ni * 2 + e] = s;
      }
    reduce_scatter16(v, lane);
    *reinterpret_cast<float2*>(part + warp_m * kN + col) = make_float2(v[0], v[1]);
  } else {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        float v[16];
#pragma unroll
        for (int ni = 0; ni < 8; ++ni)
#pragma unroll
          for (int e = 0; e < 2; ++e) v[ni * 2 + e] = wr[mi][hf] * fmaxf(acc[mi][ni][hf * 2 + e], 0.0f);
        reduce_scatter16(v, lane);
        *reinterpret_cast<float2*>(part + (warp_m * 4 + mi * 2 + hf) * kN + col) = make_float2(v[0], v[1]);
      }
  }
}

// -inf for keys [s0, s1) of the block's nq queries (rows t0..): the tiles of its chunk that lie in
// the future of every one of them, never computed.
__device__ __forceinline__ void fill_future_keys(float* scores, int64_t scores_stride, int t0, int nq, int s0, int s1,
                                                 int tid, int threads) {
  const int width = s1 - s0;
  if (width > 0)
    for (int i = tid; i < nq * width; i += threads) {
      const int lq = i / width, s = s0 + i % width;
      scores[static_cast<int64_t>(t0 + lq) * scores_stride + s] = -INFINITY;
    }
}

}  // namespace
}  // namespace indexcache::cuda
