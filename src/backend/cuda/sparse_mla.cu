// Sparse MLA attention in absorbed form on bf16 tensor cores (mma.sync m16n8k16, f32 accumulation).
//
// Work split: one block per (query token, group of kM = 32 or 64 heads, split of the selected set).
// The block keeps its heads' queries Q [kM x 576] in shared memory and walks its selected rows in
// tiles of kTile = 64: the tile's latent rows (1152 B each) are gathered with cp.async into one of
// two shared buffers while the other is being used (invalid entries, < 0, are zero-filled and their
// scores masked to -inf). 8 warps = kRowGroups x kSplit: warp (rg, ns) owns heads rg*16 .. rg*16+15
// and
//   - computes the scores of those 16 heads against its own kTile / kSplit keys of the tile,
//   - shares its row maxima through shared memory (the running max is then the same in every warp
//     of the row group), writes its probabilities as bf16 into a shared P tile,
//   - accumulates O[16 heads x 512 / kSplit value dims] += P[16 x 64] V[64 x its dims].
// Each warp keeps its partial row sums l (over its own keys); they are added at the end.
// Shared memory rows of 16-byte chunks are XOR-swizzled (chunk ^ (row & 7)) so every ldmatrix phase
// (8 rows, same logical chunk) touches 8 distinct bank groups.
//
// With few tokens (decode) the selected set is split across blocks; each split writes its normalised
// f32 partial output and log-sum-exp to a stream-ordered workspace, and a second kernel combines
// them (flash-decoding). The workspace is the caller's (SparseMlaParams::workspace, sized by
// sparse_mla_workspace_bytes; no allocation per call, graph capturable) or allocated stream-ordered.
//
// Variant 1 (heads <= 32, one split): the same kernel with 32-row tiles and 5 cp.async buffers, so
// up to 4 tiles of gathers are in flight while one is computed (the 64-row kernel keeps at most one
// tile in flight); each warp then scores 8 keys, one x4 ldmatrix giving the B fragments of two k-steps.
//
// Dispatch (SparseMlaParams::variant): prefill calls with one split go by default (variant 0) to the
// wgmma kernel of sparse_mla_wgmma.cu (any head count, the last 64-head group padded); calls that
// split the selected set (decode) use this file's kernels. Variant 1 = this file's kernels only (the
// deep pipeline where it applies), 2 = the wgmma kernel (an error when the plan has more than one
// split; automatic splits then mean one), 3 = this file's kernel with 64-row tiles only (the default
// before the wgmma kernel, kept for A/B measurement).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <string>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/sm_count.cuh"
#include "backend/cuda/device_helpers.cuh"
#include "backend/cuda/dsa_bf16.h"
#include "backend/cuda/sparse_mla_wgmma.h"

namespace indexcache::cuda {

namespace {

constexpr int kDk = 576;             // key dims: 512 latent + 64 rope
constexpr int kDv = 512;             // value dims: the latent
constexpr int kChunksK = kDk / 8;    // 16-byte chunks per latent / query row (72)
constexpr int kTile = 64;            // selected rows per tile
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxSelected = 2048;
constexpr int kMaxHeads = 128;
constexpr int kMaxSplits = kMaxSelected / kTile;  // 32
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct KernelParams {
  const __nv_bfloat16* q;   // [tokens][heads][576]
  const __nv_bfloat16* kv;  // [keys][kv_stride]
  int64_t kv_stride;
  const int32_t* indices;   // [tokens][num_selected]
  int num_selected;
  __nv_bfloat16* out;       // [tokens][heads][512]       (splits == 1)
  float* lse;               // [tokens][heads] or null    (splits == 1)
  float* ws_out;            // [tokens][heads][splits][512] (splits > 1)
  float* ws_lse;            // [tokens][heads][splits]      (splits > 1)
  int tokens, heads, groups, splits, tiles_per_split;
  float scale_log2;         // scale * log2(e)
};

// Shared memory layout for kM heads per block (bytes).
// kT rows per tile (64 by default; 32 for the deep pipeline), kS tile buffers (cp.async stages).
template <int kM, int kT = kTile, int kS = 2>
struct Smem {
  static constexpr int kRowGroups = kM / 16;
  static constexpr int kSplit = kWarps / kRowGroups;
  static constexpr size_t q_off = 0;
  static constexpr size_t kv_off = q_off + size_t(kM) * kDk * 2;
  static constexpr size_t p_off = kv_off + size_t(kS) * kT * kDk * 2;
  static constexpr size_t max_off = p_off + size_t(kM) * kT * 2;
  static constexpr size_t sum_off = max_off + size_t(kSplit) * kM * 4;
  static constexpr size_t idx_off = sum_off + size_t(kSplit) * kM * 4;
  static constexpr size_t bytes = idx_off + size_t(kS) * kT * 4;
};

// Deep-pipeline variant (heads <= 32, one split): 32-row tiles, 5 buffers, up to 4 tiles in flight.
constexpr int kDeepTile = 32;
constexpr int kDeepStages = 5;

static_assert(Smem<64>::bytes <= 227 * 1024, "shared memory of the 64-head block exceeds the sm_90 limit");
static_assert(Smem<32, kDeepTile, kDeepStages>::bytes <= 227 * 1024,
              "shared memory of the deep-pipeline block exceeds the sm_90 limit");

// ------------------------------------------------------------------ PTX wrappers

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                                  uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

// Byte offset of 16-byte chunk `c` of row `r` in a swizzled matrix of `chunks` chunks per row
// (chunks is a multiple of 8, so the XOR stays inside the row).
__device__ __forceinline__ uint32_t swz(int r, int c, int chunks) {
  return static_cast<uint32_t>((r * chunks + (c ^ (r & 7))) * 16);
}

// ------------------------------------------------------------------ main kernel

// Byte offset of 16-byte chunk `c` of row `r` in the P tile (kT / 8 chunks per row). With 8 chunks
// this is swz; with 4 chunks (kT 32) two rows share a 128-byte bank line, so the XOR uses r >> 1:
// the 8 rows of an ldmatrix phase (same c) then land in 8 distinct 16-byte bank groups.
template <int kT>
__device__ __forceinline__ uint32_t p_swz(int r, int c) {
  if constexpr (kT / 8 >= 8) {
    return swz(r, c, kT / 8);
  } else {
    static_assert(kT / 8 == 4, "P tiles of 4 or 8+ chunks per row");
    return static_cast<uint32_t>((r * 4 + (c ^ ((r >> 1) & 3))) * 16);
  }
}

template <int kM, int kT = kTile, int kS = 2>
__global__ void __launch_bounds__(kThreads, 1) sparse_mla_kernel(const KernelParams p) {
  using L = Smem<kM, kT, kS>;
  constexpr int kSplit = L::kSplit;         // warps sharing one row group of 16 heads
  constexpr int kKeysW = kT / kSplit;       // keys per warp in the score step (8, 16 or 32)
  constexpr int kDimsW = kDv / kSplit;      // value dims per warp (128 or 256)
  constexpr int kNS = kKeysW / 8;           // score n-tiles per warp
  constexpr int kNO = kDimsW / 8;           // output n-tiles per warp
  constexpr int kTpr = kThreads / kT;       // gather threads per row (4 or 8)
  static_assert((kNS == 1 || kNS % 2 == 0) && kDimsW % 16 == 0, "score n-tiles are 1 or pairs");
  static_assert(kT % 16 == 0 && kThreads % kT == 0 && kChunksK % kTpr == 0, "tile shape");
  static_assert(kS >= 2, "at least double buffering");

  extern __shared__ __align__(128) unsigned char smem[];
  float* red_max = reinterpret_cast<float*>(smem + L::max_off);  // [kSplit][kM]
  float* red_sum = reinterpret_cast<float*>(smem + L::sum_off);  // [kSplit][kM]
  int* idx_s = reinterpret_cast<int*>(smem + L::idx_off);        // [kS][kT]
  const uint32_t q_base = smem_addr(smem + L::q_off);
  const uint32_t kv_base = smem_addr(smem + L::kv_off);
  const uint32_t p_base = smem_addr(smem + L::p_off);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int rg = warp / kSplit, ns = warp % kSplit;
  const int g = lane >> 2, tq = lane & 3;  // fragment row / column-pair of this lane

  int bid = blockIdx.x;
  const int split = bid % p.splits;
  bid /= p.splits;
  const int grp = bid % p.groups;
  const int t = bid / p.groups;
  const int h0 = grp * kM;

  const int ntiles = (p.num_selected + kT - 1) / kT;
  const int tile_begin = split * p.tiles_per_split;
  const int tile_end = min(ntiles, tile_begin + p.tiles_per_split);
  const int32_t* sel = p.indices + static_cast<int64_t>(t) * p.num_selected;

  // Gather of tile `tile` into buffer `buf`: kTpr threads per row, each 72 / kTpr of the chunks.
  auto issue_tile = [&](int tile, int buf) {
    const int r = tid / kTpr, qd = tid % kTpr;
    const int pos = tile * kT + r;
    const int j = pos < p.num_selected ? sel[pos] : -1;
    if (qd == 0) idx_s[buf * kT + r] = j;
    const __nv_bfloat16* src = p.kv + (j >= 0 ? static_cast<int64_t>(j) * p.kv_stride : 0);
    const int bytes = j >= 0 ? 16 : 0;
    const uint32_t dst = kv_base + static_cast<uint32_t>(buf * kT * kDk * 2);
#pragma unroll
    for (int i = 0; i < kChunksK / kTpr; ++i) {
      const int c = i * kTpr + qd;
      cp_async16(dst + swz(r, c, kChunksK), src + c * 8, bytes);
    }
  };

  // Running state for rows g and g + 8 of this warp's row group (log2 domain).
  float m_run[2] = {-INFINITY, -INFINITY};
  float l_part[2] = {0.f, 0.f};
  float acc_o[kNO][4];
#pragma unroll
  for (int n = 0; n < kNO; ++n) acc_o[n][0] = acc_o[n][1] = acc_o[n][2] = acc_o[n][3] = 0.f;

  if (tile_begin < tile_end) {
    // Q of this block's heads (rows past `heads` are zero), same group as the first tile.
    for (int r = tid >> 2; r < kM; r += kThreads / 4) {
      const int h = h0 + r, qd = tid & 3;
      const bool ok = h < p.heads;
      const __nv_bfloat16* src = p.q + (ok ? (static_cast<int64_t>(t) * p.heads + h) * kDk : 0);
      for (int i = 0; i < kChunksK / 4; ++i) {
        const int c = i * 4 + qd;
        cp_async16(q_base + swz(r, c, kChunksK), src + c * 8, ok ? 16 : 0);
      }
    }
    // Prologue: tiles tile_begin .. tile_begin + kS - 2, one commit group each (Q joins the first);
    // groups are committed even when empty so that group i always holds tile tile_begin + i.
#pragma unroll
    for (int s = 0; s < kS - 1; ++s) {
      if (tile_begin + s < tile_end) issue_tile(tile_begin + s, s);
      cp_async_commit();
    }
  }

  const int qrow = rg * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;  // A-operand ldmatrix row
  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int it = tile - tile_begin;
    const int buf = it % kS;
    // Committed so far: kS - 1 + it groups; allowing kS - 2 pending means group `it` has landed.
    cp_async_wait<kS - 2>();
    __syncthreads();  // tile (and Q) visible to all; the buffer of the previous tile is free again
    if (tile + kS - 1 < tile_end) issue_tile(tile + kS - 1, (it + kS - 1) % kS);
    cp_async_commit();
    const uint32_t kvb = kv_base + static_cast<uint32_t>(buf * kT * kDk * 2);
    const int* idx = idx_s + buf * kT;

    // ---- S = Q K^T for rows rg*16.., keys ns*kKeysW ..
    float acc_s[kNS][4];
#pragma unroll
    for (int n = 0; n < kNS; ++n) acc_s[n][0] = acc_s[n][1] = acc_s[n][2] = acc_s[n][3] = 0.f;
    const int krow = ns * kKeysW + (lane & 7) + (lane >> 4) * 8;  // B-operand ldmatrix row (key)
    if constexpr (kNS == 1) {
      // 8 keys per warp: one x4 ldmatrix gives the B fragments of two k-steps (chunks 4*k2 .. +3 of
      // keys ns*8 .. +7: matrices 0, 1 = b0, b1 of step 2*k2; matrices 2, 3 = those of step 2*k2+1).
      const int krow8 = ns * 8 + (lane & 7);
#pragma unroll 2
      for (int k2 = 0; k2 < kDk / 32; ++k2) {
        uint32_t a0[4], a1[4], b0, b1, b2, b3;
        ldmatrix_x4(q_base + swz(qrow, 4 * k2 + (lane >> 4), kChunksK), a0[0], a0[1], a0[2], a0[3]);
        ldmatrix_x4(q_base + swz(qrow, 4 * k2 + 2 + (lane >> 4), kChunksK), a1[0], a1[1], a1[2], a1[3]);
        ldmatrix_x4(kvb + swz(krow8, 4 * k2 + (lane >> 3), kChunksK), b0, b1, b2, b3);
        mma_bf16(acc_s[0], a0, b0, b1);
        mma_bf16(acc_s[0], a1, b2, b3);
      }
    } else {
#pragma unroll 4
      for (int kk = 0; kk < kDk / 16; ++kk) {
        uint32_t a[4];
        ldmatrix_x4(q_base + swz(qrow, 2 * kk + (lane >> 4), kChunksK), a[0], a[1], a[2], a[3]);
#pragma unroll
        for (int np = 0; np < kNS / 2; ++np) {
          uint32_t b0, b1, b2, b3;
          ldmatrix_x4(kvb + swz(krow + np * 16, 2 * kk + ((lane >> 3) & 1), kChunksK), b0, b1, b2, b3);
          mma_bf16(acc_s[2 * np], a, b0, b1);
          mma_bf16(acc_s[2 * np + 1], a, b2, b3);
        }
      }
    }

    // ---- scale, mask, row max of this warp's keys
    float mloc[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kNS; ++n) {
      const int key = ns * kKeysW + n * 8 + 2 * tq;
      const bool v0 = idx[key] >= 0, v1 = idx[key + 1] >= 0;
      acc_s[n][0] = v0 ? acc_s[n][0] * p.scale_log2 : -INFINITY;
      acc_s[n][1] = v1 ? acc_s[n][1] * p.scale_log2 : -INFINITY;
      acc_s[n][2] = v0 ? acc_s[n][2] * p.scale_log2 : -INFINITY;
      acc_s[n][3] = v1 ? acc_s[n][3] * p.scale_log2 : -INFINITY;
      mloc[0] = fmaxf(mloc[0], fmaxf(acc_s[n][0], acc_s[n][1]));
      mloc[1] = fmaxf(mloc[1], fmaxf(acc_s[n][2], acc_s[n][3]));
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      mloc[i] = fmaxf(mloc[i], __shfl_xor_sync(0xffffffffu, mloc[i], 1));
      mloc[i] = fmaxf(mloc[i], __shfl_xor_sync(0xffffffffu, mloc[i], 2));
    }
    const int row0 = rg * 16 + g;
    if (tq == 0) {
      red_max[ns * kM + row0] = mloc[0];
      red_max[ns * kM + row0 + 8] = mloc[1];
    }
    __syncthreads();  // (A) row maxima of every warp of the row group

    float alpha[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float mt = m_run[i];
#pragma unroll
      for (int s = 0; s < kSplit; ++s) mt = fmaxf(mt, red_max[s * kM + row0 + 8 * i]);
      const float m_use = mt == -INFINITY ? 0.f : mt;  // nothing valid yet: p = 0, alpha = 0
      alpha[i] = exp2f(m_run[i] - m_use);
      m_run[i] = mt;
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < kNS; ++n) {
        acc_s[n][2 * i] = exp2f(acc_s[n][2 * i] - m_use);
        acc_s[n][2 * i + 1] = exp2f(acc_s[n][2 * i + 1] - m_use);
        sum += acc_s[n][2 * i] + acc_s[n][2 * i + 1];
      }
      l_part[i] = l_part[i] * alpha[i] + sum;
    }
    // P (bf16) into the shared tile: row row0 (+8), keys ns*kKeysW + n*8 + 2tq, +1.
#pragma unroll
    for (int n = 0; n < kNS; ++n) {
      const int chunk = ns * kNS + n;
      const uint32_t off = static_cast<uint32_t>(tq * 4);
      asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(p_base + p_swz<kT>(row0, chunk) + off),
                   "r"(pack_bf16(acc_s[n][0], acc_s[n][1]))
                   : "memory");
      asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(p_base + p_swz<kT>(row0 + 8, chunk) + off),
                   "r"(pack_bf16(acc_s[n][2], acc_s[n][3]))
                   : "memory");
    }
#pragma unroll
    for (int n = 0; n < kNO; ++n) {
      acc_o[n][0] *= alpha[0];
      acc_o[n][1] *= alpha[0];
      acc_o[n][2] *= alpha[1];
      acc_o[n][3] *= alpha[1];
    }
    __syncthreads();  // (B) the whole P tile

    // ---- O += P V for rows rg*16.., value dims ns*kDimsW ..
    const int vrow = (lane & 7) + ((lane >> 3) & 1) * 8;  // key row within a 16-key step
#pragma unroll
    for (int kk = 0; kk < kT / 16; ++kk) {
      uint32_t a[4];
      ldmatrix_x4(p_base + p_swz<kT>(qrow, 2 * kk + (lane >> 4)), a[0], a[1], a[2], a[3]);
#pragma unroll
      for (int np = 0; np < kNO / 2; ++np) {
        uint32_t b0, b1, b2, b3;
        const int chunk = (ns * kDimsW + np * 16) / 8 + (lane >> 4);
        ldmatrix_x4_trans(kvb + swz(16 * kk + vrow, chunk, kChunksK), b0, b1, b2, b3);
        mma_bf16(acc_o[2 * np], a, b0, b1);
        mma_bf16(acc_o[2 * np + 1], a, b2, b3);
      }
    }
  }

  // ---- finish: total row sums over the warps of the row group, normalise, write.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l_part[i] += __shfl_xor_sync(0xffffffffu, l_part[i], 1);
    l_part[i] += __shfl_xor_sync(0xffffffffu, l_part[i], 2);
  }
  const int row0 = rg * 16 + g;
  if (tq == 0) {
    red_sum[ns * kM + row0] = l_part[0];
    red_sum[ns * kM + row0 + 8] = l_part[1];
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = row0 + 8 * i;
    const int h = h0 + row;
    if (h >= p.heads) continue;
    float l = 0.f;
#pragma unroll
    for (int s = 0; s < kSplit; ++s) l += red_sum[s * kM + row];
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const float lse = l > 0.f ? (m_run[i] + log2f(l)) * kLn2 : -INFINITY;
    const int64_t th = static_cast<int64_t>(t) * p.heads + h;
    if (p.splits == 1) {
      __nv_bfloat16* o = p.out + th * kDv + ns * kDimsW + 2 * tq;
#pragma unroll
      for (int n = 0; n < kNO; ++n)
        *reinterpret_cast<__nv_bfloat162*>(o + n * 8) =
            __floats2bfloat162_rn(acc_o[n][2 * i] * inv, acc_o[n][2 * i + 1] * inv);
      if (p.lse != nullptr && ns == 0 && tq == 0) p.lse[th] = lse;
    } else {
      float* o = p.ws_out + (th * p.splits + split) * kDv + ns * kDimsW + 2 * tq;
#pragma unroll
      for (int n = 0; n < kNO; ++n)
        *reinterpret_cast<float2*>(o + n * 8) = make_float2(acc_o[n][2 * i] * inv, acc_o[n][2 * i + 1] * inv);
      if (ns == 0 && tq == 0) p.ws_lse[th * p.splits + split] = lse;
    }
  }
}

// ------------------------------------------------------------------ split combine

// One block of 128 threads per (token, head); each thread owns 4 of the 512 value dims.
__global__ void __launch_bounds__(128) sparse_mla_combine_kernel(const KernelParams p) {
  const int64_t th = blockIdx.x;
  const float* lse_s = p.ws_lse + th * p.splits;
  float mx = -INFINITY;
  for (int s = 0; s < p.splits; ++s) mx = fmaxf(mx, lse_s[s]);
  const int d = threadIdx.x * 4;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  float wsum = 0.f;
  if (mx != -INFINITY) {
    for (int s = 0; s < p.splits; ++s) {
      const float w = __expf(lse_s[s] - mx);  // 0 for empty splits (lse -inf)
      if (w == 0.f) continue;
      const float4 o = *reinterpret_cast<const float4*>(p.ws_out + (th * p.splits + s) * kDv + d);
      wsum += w;
      acc.x += w * o.x;
      acc.y += w * o.y;
      acc.z += w * o.z;
      acc.w += w * o.w;
    }
  }
  const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
  __nv_bfloat16* o = p.out + th * kDv + d;
  reinterpret_cast<__nv_bfloat162*>(o)[0] = __floats2bfloat162_rn(acc.x * inv, acc.y * inv);
  reinterpret_cast<__nv_bfloat162*>(o)[1] = __floats2bfloat162_rn(acc.z * inv, acc.w * inv);
  if (p.lse != nullptr && threadIdx.x == 0) p.lse[th] = wsum > 0.f ? mx + logf(wsum) : -INFINITY;
}

template <int kM, int kT = kTile, int kS = 2>
void launch_main(const KernelParams& kp, int blocks, cudaStream_t stream) {
  constexpr size_t bytes = Smem<kM, kT, kS>::bytes;
  IC_CUDA_CHECK(cudaFuncSetAttribute(sparse_mla_kernel<kM, kT, kS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(bytes)));
  sparse_mla_kernel<kM, kT, kS><<<blocks, kThreads, bytes, stream>>>(kp);
  IC_CUDA_CHECK_LAUNCH("sparse_mla_kernel");
}

bool aligned(const void* ptr, size_t a) { return reinterpret_cast<uintptr_t>(ptr) % a == 0; }

}  // namespace

namespace {

// Shape checks shared by sparse_mla_bf16 and sparse_mla_workspace_bytes (no pointer checks).
void check_shape(const SparseMlaParams& p, const char* what) {
  if (p.tokens < 0 || p.heads < 1 || p.heads > kMaxHeads)
    throw_runtime(what, "need tokens >= 0 and 1 <= heads <= 128 (got tokens " + std::to_string(p.tokens) +
                            ", heads " + std::to_string(p.heads) + ")");
  if (p.dim_k != kDk || p.dim_v != kDv)
    throw_runtime(what, "only dim_k 576 and dim_v 512 are supported (got " + std::to_string(p.dim_k) + ", " +
                            std::to_string(p.dim_v) + ")");
  if (p.num_selected < 0 || p.num_selected > kMaxSelected)
    throw_runtime(what, "num_selected must be in 0..2048 (got " + std::to_string(p.num_selected) + ")");
  if (p.num_splits < 0) throw_runtime(what, "num_splits must be >= 0");
  if (p.variant < 0 || p.variant > 3)
    throw_runtime(what, "variant must be 0, 1, 2 or 3 (got " + std::to_string(p.variant) + ")");
}

// How a call is cut into blocks: head groups of kM, splits of the selected set.
struct Plan {
  int kM = 32, groups = 1, ntiles = 0, splits = 1, tiles_per_split = 0;
  size_t ws_bytes = 0;  // split partials: [tokens][heads][splits][512] f32 then [tokens][heads][splits] f32
};

Plan make_plan(const SparseMlaParams& p) {
  Plan pl;
  pl.kM = p.heads <= 32 ? 32 : 64;
  pl.groups = (p.heads + pl.kM - 1) / pl.kM;
  pl.ntiles = (p.num_selected + kTile - 1) / kTile;
  int splits = p.num_splits;
  if (splits == 0 && p.variant == 2) splits = 1;  // the wgmma kernel runs one split (no device query)
  if (splits == 0) {
    const int sms = detail::current_device_sm_count();
    const int64_t base = static_cast<int64_t>(p.tokens) * pl.groups;
    splits = base >= sms ? 1 : static_cast<int>((sms + base - 1) / base);
  }
  splits = std::max(1, std::min({splits, pl.ntiles, kMaxSplits}));
  pl.tiles_per_split = pl.ntiles == 0 ? 0 : (pl.ntiles + splits - 1) / splits;
  if (pl.tiles_per_split > 0) splits = (pl.ntiles + pl.tiles_per_split - 1) / pl.tiles_per_split;
  pl.splits = splits;
  if (splits > 1) pl.ws_bytes = static_cast<size_t>(p.tokens) * p.heads * splits * (kDv + 1) * sizeof(float);
  return pl;
}

}  // namespace

size_t sparse_mla_workspace_bytes(const SparseMlaParams& p) {
  check_shape(p, "sparse_mla_workspace_bytes");
  if (p.tokens == 0) return 0;
  return make_plan(p).ws_bytes;
}

void sparse_mla_bf16(const SparseMlaParams& p, void* stream_ptr) {
  const char* what = "sparse_mla_bf16";
  check_shape(p, what);
  if (p.kv_stride < kDk || p.kv_stride % 8 != 0)
    throw_runtime(what, "kv_stride must be >= 576 and a multiple of 8 (got " + std::to_string(p.kv_stride) + ")");
  if (!std::isfinite(p.scale)) throw_runtime(what, "scale must be finite");
  if (p.tokens == 0) return;
  if (p.q == nullptr || p.kv == nullptr || p.out == nullptr || (p.indices == nullptr && p.num_selected > 0))
    throw_runtime(what, "null q, kv, indices or out");
  if (!aligned(p.q, 16) || !aligned(p.kv, 16) || !aligned(p.out, 16))
    throw_runtime(what, "q, kv and out must be 16-byte aligned");
  if (p.workspace != nullptr && !aligned(p.workspace, 16)) throw_runtime(what, "workspace must be 16-byte aligned");

  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const Plan pl = make_plan(p);
  if (p.workspace != nullptr && p.workspace_bytes < pl.ws_bytes)
    throw_runtime(what, "workspace of " + std::to_string(p.workspace_bytes) + " bytes is smaller than the " +
                            std::to_string(pl.ws_bytes) + " needed (sparse_mla_workspace_bytes)");

  // The wgmma (sm_90a) prefill kernel: the default (variant 0) wherever it applies (one split, any
  // head count), forced by variant 2; variants 1 and 3 force this file's mma.sync kernels.
  const bool wgmma_ok = sparse_mla_wgmma_applies(p, pl.splits);
  if (p.variant == 2 && !wgmma_ok)
    throw_runtime(what, "variant 2 (the wgmma kernel) needs one split of the selected set (the plan has " +
                            std::to_string(pl.splits) + "; set num_splits to 0 or 1)");
  if (wgmma_ok && (p.variant == 0 || p.variant == 2)) {
    sparse_mla_wgmma_bf16(p, stream_ptr);
    return;
  }

  const int64_t blocks = static_cast<int64_t>(p.tokens) * pl.groups * pl.splits;
  if (blocks > INT32_MAX) throw_runtime(what, "too many tokens");

  KernelParams kp{};
  kp.q = static_cast<const __nv_bfloat16*>(p.q);
  kp.kv = static_cast<const __nv_bfloat16*>(p.kv);
  kp.kv_stride = p.kv_stride;
  kp.indices = p.indices;
  kp.num_selected = p.num_selected;
  kp.out = static_cast<__nv_bfloat16*>(p.out);
  kp.lse = p.lse;
  kp.tokens = p.tokens;
  kp.heads = p.heads;
  kp.groups = pl.groups;
  kp.splits = pl.splits;
  kp.tiles_per_split = pl.tiles_per_split;
  kp.scale_log2 = p.scale * kLog2e;

  void* owned = nullptr;
  if (pl.splits > 1) {
    void* ws = p.workspace;
    if (ws == nullptr) {
      IC_CUDA_CHECK(cudaMallocAsync(&owned, pl.ws_bytes, stream));
      ws = owned;
    }
    const size_t rows = static_cast<size_t>(p.tokens) * p.heads * pl.splits;
    kp.ws_out = static_cast<float*>(ws);
    kp.ws_lse = kp.ws_out + rows * kDv;
  }
  try {
    if (p.variant == 1 && pl.kM == 32 && pl.splits == 1) {
      kp.tiles_per_split = (p.num_selected + kDeepTile - 1) / kDeepTile;
      launch_main<32, kDeepTile, kDeepStages>(kp, static_cast<int>(blocks), stream);
    } else if (pl.kM == 32)
      launch_main<32>(kp, static_cast<int>(blocks), stream);
    else
      launch_main<64>(kp, static_cast<int>(blocks), stream);
    if (pl.splits > 1) {
      const unsigned rows = static_cast<unsigned>(static_cast<int64_t>(p.tokens) * p.heads);
      sparse_mla_combine_kernel<<<rows, 128, 0, stream>>>(kp);
      IC_CUDA_CHECK_LAUNCH("sparse_mla_combine_kernel");
    }
  } catch (...) {
    if (owned != nullptr) cudaFreeAsync(owned, stream);
    throw;
  }
  if (owned != nullptr) IC_CUDA_CHECK(cudaFreeAsync(owned, stream));
}

}  // namespace indexcache::cuda
