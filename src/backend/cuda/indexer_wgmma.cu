// Lightning-indexer scores on Hopper warpgroup MMA (wgmma, sm_90a), bf16 or e4m3 inputs, f32
// accumulation, fused with ReLU, the head weights and the head sum:
//   bf16: scores[t, s] = scale * sum_h w[t, h] * relu(q[t, h, :] . k[s, :])
//   fp8:  scores[t, s] = scale * k_scale[s] * sum_h (w[t, h] * q_scale[t, h]) * relu(q8[t, h, :] . k8[s, :])
//   (s <= positions[t]; -inf for positions[t] < s < keys), as indexer_bf16.cu / indexer_fp8.cu.
//
// GEMM view, transposed with respect to the mma.sync kernels: M = keys (64 per warpgroup tile),
// N = 256 (query, head) columns (256 / heads consecutive queries, all heads), K = 128. So in the
// m64n256 accumulator a thread holds, for its two keys (rows), 64 columns: 2 adjacent heads of every
// 8-column group. The head sum is then mostly thread-local (heads / 4 products per query and key),
// finished by a 2-step butterfly over the 4 lanes of a quad: far less shuffling than summing over
// accumulator rows, and no shared-memory partials.
//
// Block: kWG warpgroups (kWG * 128 threads; 3, or 2 for 16 heads) for one group of queries and a
// chunk of 64-key tiles. The queries' slab Q [256 rows x 128] stays in shared memory (B operand);
// every warpgroup walks its own tiles of the chunk (tile j0 + wg, j0 + wg + kWG, ...) with its own
// kStages-deep cp.async ring (A operand) and its own named barrier, so warpgroups drift apart and
// one's epilogue overlaps the others' MMAs. Operands are stored K-major with the 128-byte swizzle of
// wgmma.cuh (bf16 rows of 256 B as two 128 B column slabs; e4m3 rows are one slab). Keys any query
// of the block cannot see are zero-filled, never read; tiles wholly in the future only get -inf.
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
#include "backend/cuda/wgmma.cuh"

namespace indexcache::cuda {

namespace {

constexpr int kCols = 256;      // (query, head) columns per block: the wgmma N
constexpr int kTileKeys = 64;   // keys per warpgroup tile: the wgmma M
constexpr int kSlabBytes = 128; // one swizzled column slab of a row

template <bool kFp8>
struct Geometry {
  static constexpr int kRowBytes = kFp8 ? 128 : 256;        // one key / query-head row
  static constexpr int kQBytes = kCols * kRowBytes;         // Q slab: 64 KB bf16, 32 KB e4m3
  static constexpr int kTileBytes = kTileKeys * kRowBytes;  // key tile: 16 KB bf16, 8 KB e4m3
  static constexpr int kKSteps = kFp8 ? 4 : 8;              // 32-byte k-steps per row
  static constexpr int kStages = kFp8 ? 4 : 3;
};

template <bool kFp8, int kWG>
constexpr size_t smem_bytes() {
  using G = Geometry<kFp8>;
  return 1024 /* alignment slack */ + G::kQBytes + static_cast<size_t>(kWG) * G::kStages * G::kTileBytes +
         kCols * sizeof(float) + 64 * sizeof(int);
}

// Copies `rows` rows (row-major, G::kRowBytes each, from `src`) into the swizzled slabs at `dst`
// (slab s at dst + s * rows_total * 128); rows >= valid are zero-filled, nothing read.
template <bool kFp8, int kRowsTotal, int kThreadsUsed>
__device__ __forceinline__ void load_rows(uint32_t dst, const char* src, int valid, int tid) {
  using G = Geometry<kFp8>;
  constexpr int kChunksPerRow = G::kRowBytes / 16;
  constexpr int kChunks = kRowsTotal * kChunksPerRow;
#pragma unroll
  for (int i = 0; i < (kChunks + kThreadsUsed - 1) / kThreadsUsed; ++i) {
    const int idx = tid + i * kThreadsUsed;
    if (kChunks % kThreadsUsed != 0 && idx >= kChunks) break;
    const int r = idx / kChunksPerRow, c = idx % kChunksPerRow;
    const bool ok = r < valid;
    const uint32_t d = dst + (c >> 3) * (kRowsTotal * kSlabBytes) + swz128(r, c & 7);
    cp_async16(d, ok ? src + static_cast<int64_t>(r) * G::kRowBytes + c * 16 : src, ok ? 16 : 0);
  }
}

struct KernelArgs {
  const char* q;
  const float* q_scale;  // fp8 only
  const char* k;
  const float* k_scale;  // fp8 only
  const float* w;
  const int32_t* positions;
  float* scores;
  int64_t scores_stride;
  int tokens, keys, chunk_tiles;
  float scale;
};

template <bool kFp8, int kHeads, int kWG>
__global__ void __launch_bounds__(kWG * 128, 1) indexer_wgmma_kernel(const KernelArgs a) {
  using G = Geometry<kFp8>;
  constexpr int kQB = kCols / kHeads;     // queries per block
  constexpr int kCPQ = kHeads / 8;        // 8-column groups per query
  constexpr int kV = 2 * kQB;             // per-thread partial sums: (query, key row half)
  constexpr int kThreads = kWG * 128;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t base = (raw + 1023u) & ~1023u;
  unsigned char* base_ptr = smem_raw + (base - raw);
  const uint32_t q_s = base;
  const uint32_t stages_s = q_s + G::kQBytes;
  float* w_s = reinterpret_cast<float*>(base_ptr + G::kQBytes + static_cast<size_t>(kWG) * G::kStages * G::kTileBytes);
  int* pos_s = reinterpret_cast<int*>(w_s + kCols);

  const int tid = threadIdx.x;
  const int t0 = blockIdx.x * kQB;
  const int nq = min(kQB, a.tokens - t0);
  const int total_tiles = (a.keys + kTileKeys - 1) / kTileKeys;
  const int j0 = blockIdx.y * a.chunk_tiles;
  const int j1 = min(total_tiles, j0 + a.chunk_tiles);

  if (tid < kQB) pos_s[tid] = tid < nq ? a.positions[t0 + tid] : -1;
  for (int n = tid; n < kCols; n += kThreads) {
    const int lq = n / kHeads;
    float wv = 0.0f;
    if (lq < nq) {
      const int64_t idx = static_cast<int64_t>(t0) * kHeads + n;
      wv = a.w[idx];
      if constexpr (kFp8) wv *= a.q_scale[idx];
    }
    w_s[n] = wv;
  }
  __syncthreads();
  int maxpos = -1;
#pragma unroll
  for (int i = 0; i < kQB; ++i) maxpos = max(maxpos, pos_s[i]);
  const int kvis = min(a.keys, maxpos + 1);  // keys any query of the block may see: [0, kvis)
  const int j_vis = kvis <= 0 ? 0 : (kvis + kTileKeys - 1) / kTileKeys;
  const int nc = max(0, min(j1, j_vis) - j0);  // tiles to compute

  if (nc > 0) {
    load_rows<kFp8, kCols, kThreads>(q_s, a.q + static_cast<int64_t>(t0) * kHeads * G::kRowBytes, nq * kHeads, tid);
    cp_async_commit();
    cp_async_wait<0>();
    fence_proxy_async_smem();
    __syncthreads();

    const int wg = tid >> 7, wtid = tid & 127;
    const int warp = wtid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const uint32_t ring = stages_s + wg * G::kStages * G::kTileBytes;
    const int my_tiles = nc > wg ? (nc - wg + kWG - 1) / kWG : 0;
    auto tile_of = [&](int it) { return j0 + wg + it * kWG; };
    auto load_tile = [&](int it) {
      const int j = tile_of(it);
      load_rows<kFp8, kTileKeys, 128>(ring + (it % G::kStages) * G::kTileBytes,
                                      a.k + static_cast<int64_t>(j) * kTileKeys * G::kRowBytes,
                                      kvis - j * kTileKeys, wtid);
    };
#pragma unroll
    for (int s = 0; s < G::kStages - 1; ++s) {
      if (s < my_tiles) load_tile(s);
      cp_async_commit();
    }

    float acc[128];
#pragma unroll 1
    for (int it = 0; it < my_tiles; ++it) {
      cp_async_wait<G::kStages - 2>();
      fence_proxy_async_smem();
      named_barrier(1 + wg, 128);  // tile it landed for the whole warpgroup; stage (it - 1) is free
      if (it + G::kStages - 1 < my_tiles) load_tile(it + G::kStages - 1);
      cp_async_commit();

      const uint32_t a_s = ring + (it % G::kStages) * G::kTileBytes;
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < G::kKSteps; ++kk) {
        const int slab = kk / 4, off = (kk % 4) * 32;
        const uint64_t da = wgmma_desc_k128(a_s + slab * (kTileKeys * kSlabBytes) + off);
        const uint64_t db = wgmma_desc_k128(q_s + slab * (kCols * kSlabBytes) + off);
        if constexpr (kFp8)
          wgmma_m64n256k32_e4m3(acc, da, db, kk > 0);
        else
          wgmma_m64n256k16_bf16(acc, da, db, kk > 0);
      }
      wgmma_commit();
      wgmma_wait<0>();

      // acc[4i + e]: key row g, column 8i + 2 t4 + e; acc[4i + 2 + e]: key row g + 8.
      float v[kV];
#pragma unroll
      for (int lq = 0; lq < kQB; ++lq) {
        float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
        for (int c = 0; c < kCPQ; ++c) {
          const int i = lq * kCPQ + c;
          const float2 wv = *reinterpret_cast<const float2*>(w_s + i * 8 + 2 * t4);
          s0 = fmaf(wv.x, fmaxf(acc[4 * i], 0.0f), s0);
          s0 = fmaf(wv.y, fmaxf(acc[4 * i + 1], 0.0f), s0);
          s1 = fmaf(wv.x, fmaxf(acc[4 * i + 2], 0.0f), s1);
          s1 = fmaf(wv.y, fmaxf(acc[4 * i + 3], 0.0f), s1);
        }
        v[2 * lq] = s0;
        v[2 * lq + 1] = s1;
      }
      // Reduce-scatter over the quad (lane bits 1, then 0): afterwards v[m] (m < kV / 4) holds the
      // quad's sum of entry m + b1 * kV / 2 + b0 * kV / 4.
      {
        const bool hi = lane & 2;
#pragma unroll
        for (int m = 0; m < kV / 2; ++m) {
          const float send = hi ? v[m] : v[m + kV / 2];
          const float keep = hi ? v[m + kV / 2] : v[m];
          v[m] = keep + __shfl_xor_sync(0xFFFFFFFFu, send, 2);
        }
      }
      {
        const bool hi = lane & 1;
#pragma unroll
        for (int m = 0; m < kV / 4; ++m) {
          const float send = hi ? v[m] : v[m + kV / 4];
          const float keep = hi ? v[m + kV / 4] : v[m];
          v[m] = keep + __shfl_xor_sync(0xFFFFFFFFu, send, 1);
        }
      }
      const int key0 = tile_of(it) * kTileKeys + warp * 16 + g;
      const int jbase = ((lane >> 1) & 1) * (kV / 2) + (lane & 1) * (kV / 4);
#pragma unroll
      for (int m = 0; m < kV / 4; ++m) {
        const int jj = jbase + m;
        const int lq = jj >> 1;
        const int key = key0 + (jj & 1) * 8;
        if (lq < nq && key < a.keys) {
          float val = v[m] * a.scale;
          if constexpr (kFp8) val *= key < kvis ? a.k_scale[key] : 0.0f;
          a.scores[static_cast<int64_t>(t0 + lq) * a.scores_stride + key] = key <= pos_s[lq] ? val : -INFINITY;
        }
      }
    }
    cp_async_wait<0>();
  }

  // Tiles of the chunk in the future of every query of the block: -inf only.
  fill_future_keys(a.scores, a.scores_stride, t0, nq, (j0 + nc) * kTileKeys, min(a.keys, j1 * kTileKeys), tid,
                   kThreads);
}

template <bool kFp8, int kHeads, int kWG>
void launch(const KernelArgs& args_in, cudaStream_t stream, const char* what) {
  constexpr size_t kSmem = smem_bytes<kFp8, kWG>();
  static const bool attr_set = [] {
    IC_CUDA_CHECK(cudaFuncSetAttribute(indexer_wgmma_kernel<kFp8, kHeads, kWG>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmem)));
    return true;
  }();
  (void)attr_set;
  KernelArgs args = args_in;
  constexpr int kQB = kCols / kHeads;
  const int qblocks = (args.tokens + kQB - 1) / kQB;
  const int tiles = (args.keys + kTileKeys - 1) / kTileKeys;
  // Long chunks amortise the Q slab; shrink them (not below one tile per warpgroup) until the grid
  // covers the GPU a few times (decode: one query block, so the keys spread over the SMs).
  int chunk = 64;
  const int64_t sms = detail::current_device_sm_count();
  while (chunk > kWG && static_cast<int64_t>(qblocks) * ((tiles + chunk - 1) / chunk) < 4 * sms) chunk /= 2;
  chunk = chunk < kWG ? kWG : chunk;
  const int chunks = (tiles + chunk - 1) / chunk;
  if (chunks > 65535) throw_runtime(what, "too many keys (" + std::to_string(args.keys) + ")");
  args.chunk_tiles = chunk;
  indexer_wgmma_kernel<kFp8, kHeads, kWG><<<dim3(qblocks, chunks), kWG * 128, kSmem, stream>>>(args);
  IC_CUDA_CHECK_LAUNCH(what);
}

template <bool kFp8>
void dispatch_heads(const KernelArgs& a, int heads, bool two_wg, cudaStream_t s, const char* what) {
  // Three warpgroups per block: one's epilogue overlaps two others' MMAs. Measured on the H200
  // (T=4096, S=204800, 32 heads): bf16 13.11 ms vs 14.24 with two, e4m3 9.06 vs 10.22. With 16
  // heads the epilogue needs ~200 registers, more than three warpgroups may hold (168): two there.
  if (two_wg) {  // A/B measurement of the two-warpgroup block
    if (heads != 32) throw_runtime(what, "the two-warpgroup wgmma kernel is built for 32 heads only");
    launch<kFp8, 32, 2>(a, s, what);
    return;
  }
  switch (heads) {
    case 16: launch<kFp8, 16, 2>(a, s, what); break;
    case 32: launch<kFp8, 32, 3>(a, s, what); break;
    case 64: launch<kFp8, 64, 3>(a, s, what); break;
    case 128: launch<kFp8, 128, 3>(a, s, what); break;
    default: throw_runtime(what, "wgmma indexer: unsupported head count " + std::to_string(heads));
  }
}

}  // namespace

bool indexer_wgmma_shape(int heads, int head_dim) {
  return head_dim == 128 && (heads == 16 || heads == 32 || heads == 64 || heads == 128);
}

bool indexer_wgmma_preferred(int heads, int head_dim, int tokens) {
  return indexer_wgmma_shape(heads, head_dim) && tokens >= 64;
}

void indexer_scores_bf16_wgmma(const IndexerBf16Params& p, void* stream) {
  KernelArgs a{static_cast<const char*>(p.q), nullptr, static_cast<const char*>(p.k), nullptr, p.w, p.positions,
               p.scores, p.scores_stride, p.tokens, p.keys, 0, p.scale};
  dispatch_heads<false>(a, p.heads, p.variant == 3, static_cast<cudaStream_t>(stream),
                        "indexer_scores_bf16 (wgmma) launch");
}

void indexer_scores_fp8_wgmma(const IndexerFp8Params& p, void* stream) {
  KernelArgs a{static_cast<const char*>(p.q), p.q_scale, static_cast<const char*>(p.k), p.k_scale, p.w, p.positions,
               p.scores, p.scores_stride, p.tokens, p.keys, 0, p.scale};
  dispatch_heads<true>(a, p.heads, p.variant == 3, static_cast<cudaStream_t>(stream),
                       "indexer_scores_fp8 (wgmma) launch");
}

}  // namespace indexcache::cuda
