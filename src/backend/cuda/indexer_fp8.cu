// Lightning-indexer scores from FP8 (e4m3) inputs on tensor cores (f32 accumulation), fused:
//   scores[t, s] = scale * k_scale[s] * sum_h (w[t, h] * q_scale[t, h]) * relu(q8[t, h, :] . k8[s, :])
//   (s <= positions[t]; -inf for positions[t] < s < keys)
// which equals scale * sum_h w * relu(q_scale * k_scale * dot) because the scales are >= 0.
//
// Hopper (sm_90) has no native fp8 mma.sync: ptxas lowers mma.m16n8k32.e4m3 to fp8->f16 conversions
// (F2FP) plus two f16 m16n8k16 HMMAs, re-converting both operands at every use. (Native fp8 on
// sm_90 is wgmma only.) So this kernel does that lowering itself, converting each operand as few times
// as possible. Every e4m3 value is exact in f16 and every product of two is exact in f32, so the
// f16 HMMA with f32 accumulation computes the same dot products.
//
// Same GEMM view and tiling as indexer_bf16.cu: M = (query, head) rows, N = keys, K = 128. Block:
// kM = 128 rows x key tiles of kN = 128, 8 warps as 4 (rows) x 2 (keys), each warp a 32 x 64 f32
// accumulator tile (2 x 8 mma tiles).
//  - q: the block's fp8 slab is copied (cp.async) into a staging buffer, then converted ONCE into an
//    f16 slab in shared memory (256 B rows, 16-byte chunks XOR-swizzled by (row & 7)); the A
//    fragments are read from it with ldmatrix at every key tile (no per-tile conversion).
//  - k: fp8 tiles (128 B rows, 8 swizzled chunks), triple-buffered with cp.async (prefetch distance
//    2); B fragments are read as fp8 with ldmatrix (half the shared bytes of bf16) and converted in
//    registers (one cvt.f16x2.e4m3x2 per f16 register).
//
// K order. K is a reduction, so A and B may use any common permutation of k. f16 m16n8k16 gives
// thread (g = lane >> 2, t4 = lane & 3) the k slots {2t4, 2t4+1} (a0/a1/b0) and {2t4+8, 2t4+9}
// (a2/a3/b1) of a 16-k step; an fp8 ldmatrix of one 16-byte k chunk gives it the real k
// 4t4..4t4+3 (bytes, low to high). So slots (2t4, 2t4+1) hold real k (4t4, 4t4+1) and slots
// (2t4+8, 2t4+9) hold real k (4t4+2, 4t4+3):
//   B: b0 = cvt(low 16 bits of the fp8 register), b1 = cvt(high 16 bits);
//   q slab: the 16 k of fp8 chunk c (words w0..w3) become f16 chunk 2c = [cvt(lo w0) .. cvt(lo w3)]
//   (slots 0-7) and f16 chunk 2c+1 = [cvt(hi w0) .. cvt(hi w3)] (slots 8-15), so a standard
//   ldmatrix.x4 of f16 chunks (2c, 2c+1) yields a0..a3 in slot order.
// Fragment layouts (PTX ISA, mma.m16n8k16 .f16, f32 accumulators):
//   A (16 x 16, row): a0 = row g, slots 2t4..+1; a1 = row g+8; a2 = row g, slots 2t4+8..+9; a3 = row g+8.
//   B (16 x 8, col):  b0 = key g, slots 2t4..+1; b1 = key g, slots 2t4+8..+9.
//   C (16 x 8, f32):  c0, c1 = row g, cols 2*t4, 2*t4+1; c2, c3 = row g+8, same cols.
// ldmatrix .m8n8 .b16 hands lane l the 4 bytes at byte offset 4 * (l & 3) of row l >> 2 of each
// 8 x 16-byte matrix. fp8 B: one ldmatrix.x4 over fp8 chunk c of keys 0-7, 8-15, 16-23, 24-31
// yields the fp8 words of one 16-k step for four n-tiles; each becomes (b0, b1) with two cvts.
// Per 16-k step a warp holds only 8 A registers (2 row halves), so 64 accumulators + operands +
// addresses fit in 128 registers (2 blocks/SM) without spilling.
//
// Epilogue as in the bf16 kernel (relu, row weight, butterfly reduce-scatter, shared partials, one
// coalesced pass per tile that adds the partials of each query and applies k_scale, scale and the
// causal mask). Keys past the last one any query of the block may see are zero-filled, never read.
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cfloat>
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
constexpr int kD = 128;        // head_dim (bytes per row in e4m3)
constexpr int kThreads = 256;  // 8 warps: 4 along rows x 2 along keys
constexpr int kRowBytes = kD;
constexpr int kTileBytes = kM * kRowBytes;  // 16 KB fp8; a key tile is the same size (kN == kM)
constexpr int kRowBytes16 = kD * 2;          // f16 q slab row
constexpr int kQ16Bytes = kM * kRowBytes16;  // 32 KB
constexpr int kKeyBufs = 3;
constexpr int kMaxParts = kM / 8;
constexpr int kMaxQB = kM / 8;
constexpr int kMaxChunkTiles = 32;
// Layout: f16 q slab | kKeyBufs fp8 key buffers (the last one stages the fp8 q slab first) | partials.
constexpr size_t kSmemBytes = static_cast<size_t>(kQ16Bytes) + static_cast<size_t>(kKeyBufs) * kTileBytes +
                              static_cast<size_t>(kMaxParts) * kN * sizeof(float);
static_assert(kKeyBufs == 3, "the q staging buffer is key buffer 2, first refilled in iteration 0");

// Byte offset of 16-byte chunk c (0..7) of row r in a swizzled 128-byte-row (fp8) tile.
__device__ __forceinline__ uint32_t swz(int r, int c) {
  return static_cast<uint32_t>(r * kRowBytes + ((c ^ (r & 7)) << 4));
}
// Byte offset of 16-byte chunk c (0..15) of row r in the swizzled 256-byte-row f16 q slab.
__device__ __forceinline__ uint32_t swz16(int r, int c) {
  return static_cast<uint32_t>(r * kRowBytes16 + ((c ^ (r & 7)) << 4));
}

// Two e4m3 pairs -> two f16x2: lo = cvt(bytes 0, 1 of x), hi = cvt(bytes 2, 3); the lower byte of a
// pair becomes the lower half.
__device__ __forceinline__ void e4m3x4_to_f16x2x2(uint32_t x, uint32_t& lo, uint32_t& hi) {
  asm("{\n.reg .b16 l, h;\nmov.b32 {l, h}, %2;\ncvt.rn.f16x2.e4m3x2 %0, l;\ncvt.rn.f16x2.e4m3x2 %1, h;\n}\n"
      : "=r"(lo), "=r"(hi)
      : "r"(x));
}

// c += A (16 x 16 f16, row) * B (16 x 8 f16, col), f32 accumulation.
__device__ __forceinline__ void mma_f16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Copies rows [0, kM) of a 128-byte-row slab starting at `src` into the swizzled tile at `dst`;
// rows >= valid_rows are zero-filled (nothing read).
__device__ __forceinline__ void load_tile_async(uint32_t dst, const char* src, int valid_rows) {
#pragma unroll
  for (int i = 0; i < kTileBytes / 16 / kThreads; ++i) {
    const int idx = threadIdx.x + i * kThreads;
    const int r = idx >> 3, c = idx & 7;
    const bool ok = r < valid_rows;
    cp_async16(dst + swz(r, c), ok ? src + static_cast<int64_t>(r) * kRowBytes + c * 16 : src, ok ? 16 : 0);
  }
}

// kWarpOneQuery: heads % 32 == 0, so the 32 rows of a warp belong to one query (partials per warp);
// otherwise heads % 8 == 0 and each 8-row group is one query (partials per 8-row group).
template <bool kWarpOneQuery>
__global__ void __launch_bounds__(kThreads, 2)
indexer_fp8_kernel(const char* __restrict__ qg, const float* __restrict__ q_scale, const char* __restrict__ kg,
                   const float* __restrict__ k_scale, const float* __restrict__ w,
                   const int32_t* __restrict__ positions, float* __restrict__ scores, int64_t scores_stride,
                   int tokens, int keys, int heads, int qb, int chunk_tiles, float scale) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ int pos_s[kMaxQB];
  __shared__ int maxpos_s;
  __shared__ float wrow_s[kM];
  const uint32_t q16_s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint32_t k_s0 = q16_s + kQ16Bytes;  // kKeyBufs fp8 key buffers follow the f16 q slab
  const uint32_t q8_s = k_s0 + 2 * kTileBytes;  // fp8 q staging = key buffer 2 (free until iteration 0)
  float* part = reinterpret_cast<float*>(smem + kQ16Bytes + kKeyBufs * kTileBytes);  // [kMaxParts][kN]

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
    // Row weights w * q_scale of the block's rows, in shared memory (read in the epilogue).
    // Made visible by the barrier before the q conversion.
    if (tid < kM) {
      const int64_t gi = static_cast<int64_t>(t0) * heads + tid;
      wrow_s[tid] = tid < rows_used ? w[gi] * q_scale[gi] : 0.0f;
    }
    const bool warp_active = warp_m * 32 < rows_used;
    // ldmatrix addresses, swizzle written out so that few registers hold them (the rows a lane
    // addresses are = lane (mod 8) in both tiles, so the XOR term is per lane). For the 16-k step
    // c (= fp8 chunk c, 0..7):
    //  A: f16 chunk 2c + (lane >> 4) of row warp_m*32 + mi*16 + (lane & 15); only bits 0-2 of the
    //     chunk are swizzled, so its offset in the row is 128 (c >> 2) + ((32 (c & 3)) ^ xa) with
    //     xa = ((lane & 7) ^ (lane >> 4)) << 4.
    //  B: fp8 chunk c of key warp_n*64 + 32 q + lane: offset (16 c) ^ xb with xb = (lane & 7) << 4.
    const uint32_t xa = static_cast<uint32_t>(((lane & 7) ^ (lane >> 4)) << 4);
    const uint32_t xb = static_cast<uint32_t>((lane & 7) << 4);
    const uint32_t a_row = q16_s + static_cast<uint32_t>((warp_m * 32 + (lane & 15)) * kRowBytes16);
    const uint32_t b_row = static_cast<uint32_t>((warp_n * 64 + lane) * kRowBytes);
    const int unit = kWarpOneQuery ? 32 : 8;  // rows per partial-sum row
    const int parts_per_query = heads / unit;

    // Pipeline: one cp.async group per key tile (group i = tile j0 + i; group 0 also holds the q slab),
    // committed even when empty so that "all but the newest group complete" always means tile `it`.
    load_tile_async(q8_s, qg + static_cast<int64_t>(t0) * heads * kRowBytes, rows_used);
    load_tile_async(k_s0, kg + static_cast<int64_t>(j0) * kN * kRowBytes, kvis - j0 * kN);
    cp_async_commit();
    if (nc > 1) load_tile_async(k_s0 + kTileBytes, kg + static_cast<int64_t>(j0 + 1) * kN * kRowBytes, kvis - (j0 + 1) * kN);
    cp_async_commit();

    // fp8 q slab (group 0) -> f16 q slab, once per block, in the permuted k order of the header:
    // fp8 chunk c of row r (words w0..w3) -> f16 chunks 2c (low pairs) and 2c + 1 (high pairs).
    cp_async_wait<1>();
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kM * (kRowBytes / 16) / kThreads; ++i) {
      const int idx = tid + i * kThreads;
      const int r = idx >> 3, c = idx & 7;
      const uint4 v = *reinterpret_cast<const uint4*>(smem + kQ16Bytes + 2 * kTileBytes + swz(r, c));
      uint4 lo, hi;
      e4m3x4_to_f16x2x2(v.x, lo.x, hi.x);
      e4m3x4_to_f16x2x2(v.y, lo.y, hi.y);
      e4m3x4_to_f16x2x2(v.z, lo.z, hi.z);
      e4m3x4_to_f16x2x2(v.w, lo.w, hi.w);
      *reinterpret_cast<uint4*>(smem + swz16(r, 2 * c)) = lo;
      *reinterpret_cast<uint4*>(smem + swz16(r, 2 * c + 1)) = hi;
    }
    // The loop's first barrier publishes the f16 slab and frees the staging buffer (key buffer 2)
    // before iteration 0 refills it.

#pragma unroll 1
    for (int it = 0; it < nc; ++it) {
      const int j = j0 + it;
      cp_async_wait<1>();
      __syncthreads();  // tile `it` (and the q slab) visible to every warp; buffer (it + 2) % 3 free

      if (it + 2 < nc)
        load_tile_async(k_s0 + ((it + 2) % kKeyBufs) * kTileBytes, kg + static_cast<int64_t>(j + 2) * kN * kRowBytes,
                        kvis - (j + 2) * kN);
      cp_async_commit();

      if (warp_active) {
        const uint32_t kb = k_s0 + (it % kKeyBufs) * kTileBytes;
        float acc[2][8][4];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int ni = 0; ni < 8; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;

        // Unrolled by 2 only: acc's indices do not depend on c, and a full unroll hoists 12 more
        // loop-invariant address offsets, which spilled at the 128-register cap (2 blocks/SM).
#pragma unroll 2
        for (int c = 0; c < kD / 16; ++c) {
          // A of step c: ldmatrix.x4 over f16 chunks (2c, 2c + 1) of rows mi*16 + 0..15.
          uint32_t a[2][4];
#pragma unroll
          for (int mi = 0; mi < 2; ++mi)
            ldmatrix_x4(a_row + (128 * (c >> 2) + ((32 * (c & 3)) ^ xa) + mi * 16 * kRowBytes16), a[mi][0], a[mi][1],
                        a[mi][2], a[mi][3]);
          // B of step c: ldmatrix.x4 over fp8 chunk c of keys 32q + 0..31 (matrix m = keys 32q + 8m..8m+7)
          // gives f[m] = n-tile 4q + m; each converts to the f16 pair (b0, b1).
#pragma unroll
          for (int q = 0; q < 2; ++q) {
            uint32_t f[4];
            ldmatrix_x4(kb + b_row + (((16 * c) ^ xb) + q * 32 * kRowBytes), f[0], f[1], f[2], f[3]);
#pragma unroll
            for (int m = 0; m < 4; ++m) {
              uint32_t b0, b1;
              e4m3x4_to_f16x2x2(f[m], b0, b1);
#pragma unroll
              for (int mi = 0; mi < 2; ++mi) mma_f16(acc[mi][4 * q + m], a[mi], b0, b1);
            }
          }
        }

        float wr[2][2];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) wr[mi][hf] = wrow_s[warp_m * 32 + mi * 16 + hf * 8 + g];
        store_warp_partials<kWarpOneQuery, kN>(acc, wr, warp_m, warp_n, lane, part);
      }
      __syncthreads();  // partials complete; every warp is done reading key buffer it % 3

      const int s0 = j * kN;
      for (int i = tid; i < nq * kN; i += kThreads) {
        const int lq = i / kN, c = i % kN;
        const int s = s0 + c;
        if (s >= keys) continue;
        float out = neg_inf;
        if (s <= pos_s[lq]) {
          float sum = 0.0f;
          for (int pp = 0; pp < parts_per_query; ++pp) sum += part[(lq * parts_per_query + pp) * kN + c];
          out = sum * (scale * k_scale[s]);
        }
        scores[static_cast<int64_t>(t0 + lq) * scores_stride + s] = out;
      }
    }
    cp_async_wait<0>();  // nothing is in flight when the block exits (the trailing groups are empty)
  }

  // Tiles of the chunk in the future of every query of the block: -inf only.
  fill_future_keys(scores, scores_stride, t0, nq, (j0 + nc) * kN, min(keys, j1 * kN), tid, kThreads);
}

// One warp per 128-element row: lane l converts elements 4l..4l+3. With rows_at, the i-th row
// processed is row rows_at[i] of both input and output. kRotate: the row is first multiplied by the
// orthonormal 128 x 128 Walsh-Hadamard matrix (butterflies over element-index bits 0..6: bits 0, 1
// inside the thread, bits 2..6 across lanes; x[i] <- x[i] + x[i^b] where bit b of i is clear,
// x[i^b] - x[i] where it is set; then times 1/sqrt(128)), all in f32.
template <bool kRotate>
__global__ void __launch_bounds__(256) quantize_rows_fp8_kernel(const uint2* __restrict__ in,
                                                                 uint32_t* __restrict__ out,
                                                                 float* __restrict__ out_scale, int64_t rows,
                                                                 const int32_t* __restrict__ rows_at) {
  const int lane = threadIdx.x & 31;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (i >= rows) return;  // whole warps leave together
  const int64_t row = rows_at ? rows_at[i] : i;
  const uint2 v = in[row * 32 + lane];
  float f[4];
  f[0] = __uint_as_float(v.x << 16);
  f[1] = __uint_as_float(v.x & 0xFFFF0000u);
  f[2] = __uint_as_float(v.y << 16);
  f[3] = __uint_as_float(v.y & 0xFFFF0000u);
  if constexpr (kRotate) {
    const float a0 = f[0] + f[1], a1 = f[0] - f[1], a2 = f[2] + f[3], a3 = f[2] - f[3];
    f[0] = a0 + a2;
    f[2] = a0 - a2;
    f[1] = a1 + a3;
    f[3] = a1 - a3;
#pragma unroll
    for (int b = 1; b < 32; b <<= 1) {
      const bool upper = lane & b;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float u = __shfl_xor_sync(0xFFFFFFFFu, f[i], b);
        f[i] = upper ? __fsub_rn(u, f[i]) : __fadd_rn(f[i], u);
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) f[i] = __fmul_rn(f[i], 0.088388347648318440550f);  // 1/sqrt(128)
  }
  float amax = fmaxf(fmaxf(fabsf(f[0]), fabsf(f[1])), fmaxf(fabsf(f[2]), fabsf(f[3])));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, o));
  const float inv = amax > 0.0f ? fminf(__fdiv_rn(448.0f, amax), FLT_MAX) : 0.0f;
  uint32_t packed = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __nv_fp8_storage_t b = __nv_cvt_float_to_fp8(__fmul_rn(f[i], inv), __NV_SATFINITE, __NV_E4M3);
    packed |= static_cast<uint32_t>(b) << (8 * i);
  }
  out[row * 32 + lane] = packed;
  if (lane == 0) out_scale[row] = __fdiv_rn(amax, 448.0f);
}

template <bool kWarpOneQuery>
void launch(const IndexerFp8Params& p, int qb, cudaStream_t stream) {
  static const bool attr_set = [] {
    IC_CUDA_CHECK(cudaFuncSetAttribute(indexer_fp8_kernel<kWarpOneQuery>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmemBytes)));
    return true;
  }();
  (void)attr_set;
  const int qblocks = (p.tokens + qb - 1) / qb;
  const int tiles = (p.keys + kN - 1) / kN;
  // Long chunks amortise the q-slab load; shrink them until the grid fills the GPU a few times.
  int chunk = kMaxChunkTiles;
  const int64_t sms = detail::current_device_sm_count();
  while (chunk > 1 && static_cast<int64_t>(qblocks) * ((tiles + chunk - 1) / chunk) < 4 * sms) chunk /= 2;
  const int chunks = (tiles + chunk - 1) / chunk;
  if (chunks > 65535) throw_runtime("cuda indexer_scores_fp8", "too many keys (" + std::to_string(p.keys) + ")");
  const dim3 grid(qblocks, chunks);
  indexer_fp8_kernel<kWarpOneQuery><<<grid, kThreads, kSmemBytes, stream>>>(
      static_cast<const char*>(p.q), p.q_scale, static_cast<const char*>(p.k), p.k_scale, p.w, p.positions,
      p.scores, p.scores_stride, p.tokens, p.keys, p.heads, qb, chunk, p.scale);
  IC_CUDA_CHECK_LAUNCH("indexer_scores_fp8 launch");
}

}  // namespace

void indexer_scores_fp8(const IndexerFp8Params& p, void* stream) {
  const char* what = "cuda indexer_scores_fp8";
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
  if (!p.q || !p.q_scale || !p.k || !p.k_scale || !p.w || !p.positions || !p.scores)
    throw_runtime(what, "null pointer argument");
  if ((reinterpret_cast<uintptr_t>(p.q) | reinterpret_cast<uintptr_t>(p.k)) % 16 != 0)
    throw_runtime(what, "q and k must be 16-byte aligned");
  if (p.variant < 0 || p.variant > 3)
    throw_runtime(what, "variant must be 0, 1, 2 or 3 (got " + std::to_string(p.variant) + ")");
  if (p.variant >= 2 && !indexer_wgmma_shape(p.heads, p.head_dim))
    throw_runtime(what, "the wgmma kernel needs 16, 32, 64 or 128 heads (got " + std::to_string(p.heads) + ")");
  if (p.variant >= 2 || (p.variant == 0 && indexer_wgmma_preferred(p.heads, p.head_dim, p.tokens))) {
    indexer_scores_fp8_wgmma(p, stream);
    return;
  }
  const int qb = kM / p.heads;  // queries per block
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (p.heads % 32 == 0)
    launch<true>(p, qb, s);
  else
    launch<false>(p, qb, s);
}

namespace {
void quantize_launch(const void* in_bf16, void* out_e4m3, float* out_scale, int64_t rows, const int32_t* rows_at,
                     bool rotate, void* stream, const char* what) {
  if (rows < 0) throw_runtime(what, "rows must be >= 0 (got " + std::to_string(rows) + ")");
  if (rows == 0) return;
  if (!in_bf16 || !out_e4m3 || !out_scale) throw_runtime(what, "null pointer argument");
  if (reinterpret_cast<uintptr_t>(in_bf16) % 8 != 0 || reinterpret_cast<uintptr_t>(out_e4m3) % 4 != 0)
    throw_runtime(what, "input must be 8-byte and output 4-byte aligned");
  constexpr int kRowsPerBlock = 8;
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  if (blocks > 0x7FFFFFFF) throw_runtime(what, "too many rows (" + std::to_string(rows) + ")");
  const auto kernel = rotate ? quantize_rows_fp8_kernel<true> : quantize_rows_fp8_kernel<false>;
  kernel<<<static_cast<unsigned>(blocks), kRowsPerBlock * 32, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const uint2*>(in_bf16), static_cast<uint32_t*>(out_e4m3), out_scale, rows, rows_at);
  IC_CUDA_CHECK_LAUNCH("quantize_rows_fp8 launch");
}
}  // namespace

void quantize_rows_fp8(const void* in_bf16, void* out_e4m3, float* out_scale, int64_t rows, void* stream,
                       bool rotate) {
  quantize_launch(in_bf16, out_e4m3, out_scale, rows, nullptr, rotate, stream, "cuda quantize_rows_fp8");
}

void quantize_rows_fp8_at(const void* in_bf16, void* out_e4m3, float* out_scale, const int32_t* rows_at,
                          int64_t rows, void* stream, bool rotate) {
  if (!rows_at && rows > 0) throw_runtime("cuda quantize_rows_fp8_at", "null rows_at");
  quantize_launch(in_bf16, out_e4m3, out_scale, rows, rows_at, rotate, stream, "cuda quantize_rows_fp8_at");
}

}  // namespace indexcache::cuda
