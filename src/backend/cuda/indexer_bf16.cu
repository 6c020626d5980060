// Lightning-indexer scores on bf16 tensor cores (mma.sync m16n8k16, f32 accumulation), fused:
//   scores[t, s] = scale * sum_h w[t, h] * relu(q[t, h, :] . k[s, :])   (s <= positions[t])
//   scores[t, s] = -inf                                                 (positions[t] < s < keys)
//
// GEMM view: M = (query, head) rows, N = keys, K = head_dim = 128 (one K tile). Row r of a block is
// head r % heads of query t0 + r / heads, so the block's q rows are one contiguous slab of q.
//
// Block: kM = 128 rows (kQB = 128 / heads queries x all heads; rows past kQB * heads are padding),
// 8 warps as 4 (rows) x 2 (keys); each warp owns a 32-row x 64-key accumulator tile (2 x 8 mma
// tiles, 64 f32 registers). A block walks a chunk of key tiles of kN = 128 keys: the q slab stays in
// shared memory for the whole chunk, key tiles are double-buffered with cp.async (zero-filled past
// the last key any query of the block may see, so no future key is ever read). Shared rows are 256 B
// with the 16-byte chunks XOR-swizzled by (row & 7), so ldmatrix reads are conflict-free.
//
// Epilogue per key tile, in registers: relu(acc) * w[row], summed over the rows the thread holds
// that belong to one query, then a butterfly reduce-scatter over the 8 lanes that share a column
// pair (lane bits 2..4) leaves each lane two column sums. Those per-warp partial sums go to shared
// memory; after a barrier, the block adds the partials of each query, scales, applies the causal
// mask and writes whole 128-key rows of scores (coalesced). Per-head logits never leave registers.
//
// Tiles past every query of the block (causal triangle) are not computed; they only get -inf.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/sm_count.cuh"
#include "backend/cuda/device_helpers.cuh"
#include "backend/cuda/indexer_epilogue.cuh"
#include "backend/cuda/dsa_bf16.h"
#include "backend/cuda/indexer_wgmma.h"

namespace indexcache::cuda {

namespace {

constexpr int kM = 128;        // (query, head) rows per block
constexpr int kN = 128;        // keys per tile
constexpr int kD = 128;        // head_dim
constexpr int kThreads = 256;  // 8 warps: 4 along rows x 2 along keys
constexpr int kRowBytes = kD * 2;
constexpr int kTileBytes = kM * kRowBytes;  // 32 KB; the key tile is the same size (kN == kM)
constexpr int kMaxParts = kM / 8;           // partial-sum rows: one per 8 (query, head) rows at most
constexpr int kMaxQB = kM / 8;              // queries per block at most (heads >= 8)
constexpr int kMaxChunkTiles = 32;
constexpr size_t kSmemBytes = 3 * static_cast<size_t>(kTileBytes) + kMaxParts * kN * sizeof(float);

// Byte offset of 16-byte chunk c (0..15) of row r in a swizzled 256-byte-row tile.
__device__ __forceinline__ uint32_t swz(int r, int c) {
  return static_cast<uint32_t>(r * kRowBytes + ((c ^ (r & 7)) << 4));
}

// Copies rows [0, kM) of a 256-byte-row slab starting at `src` into the swizzled tile at `dst`;
// rows >= valid_rows are zero-filled (nothing read).
__device__ __forceinline__ void load_tile_async(uint32_t dst, const char* src, int valid_rows) {
#pragma unroll
  for (int i = 0; i < kTileBytes / 16 / kThreads; ++i) {
    const int idx = threadIdx.x + i * kThreads;
    const int r = idx >> 4, c = idx & 15;
    const bool ok = r < valid_rows;
    cp_async16(dst + swz(r, c), ok ? src + static_cast<int64_t>(r) * kRowBytes + c * 16 : src, ok ? 16 : 0);
  }
}

// kWarpOneQuery: heads % 32 == 0, so the 32 rows of a warp belong to one query (partials per warp);
// otherwise heads % 8 == 0 and each 8-row group is one query (partials per 8-row group).
template <bool kWarpOneQuery>
__global__ void __launch_bounds__(kThreads, 2)
indexer_bf16_kernel(const char* __restrict__ qg, const char* __restrict__ kg,
                    const float* __restrict__ w, const int32_t* __restrict__ positions,
                    float* __restrict__ scores, int64_t scores_stride, int tokens, int keys, int heads,
                    int qb, int chunk_tiles, float scale) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ int pos_s[kMaxQB];
  __shared__ int maxpos_s;
  const uint32_t q_s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint32_t k_s0 = q_s + kTileBytes;  // two key buffers follow the q slab
  float* part = reinterpret_cast<float*>(smem + 3 * kTileBytes);  // [kMaxParts][kN]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp & 3, warp_n = warp >> 2;
  const int g = lane >> 2;
  const int t0 = blockIdx.x * qb;
  const int nq = min(qb, tokens - t0);  // queries of this block (>= 1)
  const int rows_used = nq * heads;
  const int total_tiles = (keys + kN - 1) / kN;
  const int j0 = blockIdx.y * chunk_tiles;
  const int j1 = min(total_tiles, j0 + chunk_tiles);
  const float neg_inf = -INFINITY;

  if (tid < kMaxQB) pos_s[tid] = tid < nq ? positions[t0 + tid] : -1;
  __syncthreads();
  if (tid == 0) {
    int m = -1;
    for (int i = 0; i < nq; ++i) m = max(m, pos_s[i]);
    maxpos_s = m;
  }
  __syncthreads();
  // Keys any query of the block may see: [0, kvis). Tiles from j_vis on are wholly in the future.
  const int kvis = min(keys, maxpos_s + 1);
  const int j_vis = kvis <= 0 ? 0 : (kvis + kN - 1) / kN;
  const int nc = max(0, min(j1, j_vis) - j0);  // tiles to compute

  if (nc > 0) {
    // Row weights of the 4 rows this thread's accumulators cover: mi (16-row half), hf (8-row half).
    float wr[2][2];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int r = warp_m * 32 + mi * 16 + hf * 8 + g;
        wr[mi][hf] = r < rows_used ? w[static_cast<int64_t>(t0) * heads + r] : 0.0f;
      }
    const bool warp_active = warp_m * 32 < rows_used;
    const int unit = kWarpOneQuery ? 32 : 8;  // rows per partial-sum row
    const int parts_per_query = heads / unit;

    load_tile_async(q_s, qg + static_cast<int64_t>(t0) * heads * kRowBytes, rows_used);
    load_tile_async(k_s0, kg + static_cast<int64_t>(j0) * kN * kRowBytes, kvis - j0 * kN);
    cp_async_commit();

#pragma unroll 1
    for (int it = 0; it < nc; ++it) {
      const int j = j0 + it;
      if (it + 1 < nc) {
        load_tile_async(k_s0 + ((it + 1) & 1) * kTileBytes, kg + static_cast<int64_t>(j + 1) * kN * kRowBytes,
                        kvis - (j + 1) * kN);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();  // tile j (and the q slab) visible to every warp

      if (warp_active) {
        const uint32_t kb = k_s0 + (it & 1) * kTileBytes;
        float acc[2][8][4];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int ni = 0; ni < 8; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;

#pragma unroll
        for (int kk = 0; kk < kD / 16; ++kk) {
          // A: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15)
          // -> a0a1, a2a3, a4a5, a6a7. Lane l addresses row (l & 15), k half (l >> 4).
          uint32_t a[2][4];
#pragma unroll
          for (int mi = 0; mi < 2; ++mi)
            ldmatrix_x4(q_s + swz(warp_m * 32 + mi * 16 + (lane & 15), kk * 2 + (lane >> 4)), a[mi][0],
                        a[mi][1], a[mi][2], a[mi][3]);
          // B (keys stored [n][k], i.e. "col" B): matrices (keys 0-7, k 0-7), (keys 0-7, k 8-15),
          // (keys 8-15, k 0-7), (keys 8-15, k 8-15) -> b0b1 of n-tile 2p, b0b1 of n-tile 2p+1.
          // Lane l addresses key (l & 7) + 8 * (l >> 4), k half (l >> 3) & 1.
#pragma unroll
          for (int p = 0; p < 4; ++p) {
            uint32_t b0, b1, b2, b3;
            ldmatrix_x4(kb + swz(warp_n * 64 + p * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1)),
                        b0, b1, b2, b3);
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
              mma_bf16(acc[mi][2 * p], a[mi], b0, b1);
              mma_bf16(acc[mi][2 * p + 1], a[mi], b2, b3);
            }
          }
        }

        store_warp_partials<kWarpOneQuery, kN>(acc, wr, warp_m, warp_n, lane, part);
      }
      __syncthreads();  // partials complete; every warp is done reading key buffer (it & 1)

      const int s0 = j * kN;
      for (int i = tid; i < nq * kN; i += kThreads) {
        const int lq = i / kN, c = i % kN;
        const int s = s0 + c;
        if (s >= keys) continue;
        float sum = 0.0f;
        for (int pp = 0; pp < parts_per_query; ++pp) sum += part[(lq * parts_per_query + pp) * kN + c];
        scores[static_cast<int64_t>(t0 + lq) * scores_stride + s] = s <= pos_s[lq] ? sum * scale : neg_inf;
      }
    }
  }

  // Tiles of the chunk in the future of every query of the block: -inf only.
  fill_future_keys(scores, scores_stride, t0, nq, (j0 + nc) * kN, min(keys, j1 * kN), tid, kThreads);
}

template <bool kWarpOneQuery>
void launch(const IndexerBf16Params& p, int qb, cudaStream_t stream) {
  static const bool attr_set = [] {
    IC_CUDA_CHECK(cudaFuncSetAttribute(indexer_bf16_kernel<kWarpOneQuery>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmemBytes)));
    return true;
  }();
  (void)attr_set;
  const int qblocks = (p.tokens + qb - 1) / qb;
  const int tiles = (p.keys + kN - 1) / kN;
  // Long chunks amortise the q-slab load; shrink them until the grid fills the GPU a few times
  // (decode: one query block, so the keys are what spreads over the SMs).
  int chunk = kMaxChunkTiles;
  const int64_t sms = detail::current_device_sm_count();
  while (chunk > 1 && static_cast<int64_t>(qblocks) * ((tiles + chunk - 1) / chunk) < 4 * sms) chunk /= 2;
  const int chunks = (tiles + chunk - 1) / chunk;
  if (chunks > 65535)
    throw_runtime("cuda indexer_scores_bf16", "too many keys (" + std::to_string(p.keys) + ")");
  const dim3 grid(qblocks, chunks);
  indexer_bf16_kernel<kWarpOneQuery><<<grid, kThreads, kSmemBytes, stream>>>(
      static_cast<const char*>(p.q), static_cast<const char*>(p.k), p.w, p.positions,
      p.scores, p.scores_stride, p.tokens, p.keys, p.heads, qb, chunk, p.scale);
  IC_CUDA_CHECK_LAUNCH("indexer_scores_bf16 launch");
}

}  // namespace

void indexer_scores_bf16(const IndexerBf16Params& p, void* stream) {
  const char* what = "cuda indexer_scores_bf16";
  if (p.tokens < 0 || p.keys < 0)
    throw_runtime(what, "tokens and keys must be >= 0 (got " + std::to_string(p.tokens) + ", " +
                            std::to_string(p.keys) + ")");
  if (p.keys > (1 << 30))  // tile counts and grids are int arithmetic
    throw_runtime(what, "keys must be at most 2^30 (got " + std::to_string(p.keys) + ")");
  if (p.tokens == 0 || p.keys == 0) return;
  if (p.head_dim != kD)
    throw_runtime(what, "head_dim must be " + std::to_string(kD) + " (got " + std::to_string(p.head_dim) + ")");
  if (p.heads < 8 || p.heads > kM || p.heads % 8 != 0)
    throw_runtime(what, "heads must be a multiple of 8 in 8.." + std::to_string(kM) + " (got " +
                            std::to_string(p.heads) + ")");
  if (p.scores_stride < p.keys)
    throw_runtime(what, "scores_stride " + std::to_string(p.scores_stride) + " < keys " + std::to_string(p.keys));
  if (!p.q || !p.k || !p.w || !p.positions || !p.scores) throw_runtime(what, "null pointer argument");
  if ((reinterpret_cast<uintptr_t>(p.q) | reinterpret_cast<uintptr_t>(p.k)) % 16 != 0)
    throw_runtime(what, "q and k must be 16-byte aligned");
  if (p.variant < 0 || p.variant > 3)
    throw_runtime(what, "variant must be 0, 1, 2 or 3 (got " + std::to_string(p.variant) + ")");
  if (p.variant >= 2 && !indexer_wgmma_shape(p.heads, p.head_dim))
    throw_runtime(what, "the wgmma kernel needs 16, 32, 64 or 128 heads (got " + std::to_string(p.heads) + ")");
  if (p.variant >= 2 || (p.variant == 0 && indexer_wgmma_preferred(p.heads, p.head_dim, p.tokens))) {
    indexer_scores_bf16_wgmma(p, stream);
    return;
  }
  const int qb = kM / p.heads;  // queries per block
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (p.heads % 32 == 0)
    launch<true>(p, qb, s);
  else
    launch<false>(p, qb, s);
}

}  // namespace indexcache::cuda
