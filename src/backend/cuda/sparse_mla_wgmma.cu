// Sparse MLA prefill on Hopper warpgroup MMA (wgmma.mma_async, sm_90a): the path of sparse_mla_bf16
// for one split of the selected set, any head count 1..128, dim_k 576, dim_v 512 (semantics in
// dsa_bf16.h).
//
// Work split: one block of two warpgroups (256 threads) per (query token, group of 64 heads); the two
// head groups of a 128-head token are adjacent block indices, so the second block's gathers of the
// same latent rows mostly hit L2 (the HBM traffic is that of one gather per token). When heads is
// not a multiple of 64 the last group is padded: its block still computes 64 rows (wgmma's M), but
// only the first `real = heads - 64 * group` are heads. The Q rows of the padding are zero-filled in
// shared memory (never read from global memory): their scores are 0 for valid keys and -inf for
// masked ones, exactly like a real row's, so they never produce NaN or inf in the shared row maxima
// and sums; their outputs and lse are never stored. (With 20 heads the block does the math of 64;
// it is bound by the gather anyway, which is the same for any head count.) A block walks the token's
// selected rows in tiles of 64:
//   - gather: every thread copies 18 of the tile's 64 x 72 16-byte chunks with cp.async (invalid
//     entries, < 0, and positions past num_selected are zero-filled) into a 128B-swizzled K-major
//     buffer: 9 column slabs of 64 dims, each 64 rows x 128 B (chunk c of row r at c ^ (r & 7));
//     two buffers, the gather of tile i + 1 is issued right after tile i becomes visible, so it has
//     the whole of tile i's math to land. Q [64 heads x 576] sits in the same layout, loaded once.
//   - S = Q K^T: warpgroup w scores keys 32w .. 32w + 31 of the tile (wgmma m64n32k16, A = Q and
//     B = K rows from shared memory, both K-major; 36 k-steps: the descriptor start advances 32 B per
//     k-step inside a slab and 8 KB per slab).
//   - online softmax in registers (log2 domain); the row maxima of the two warpgroups are exchanged
//     through shared memory so both use the same running max; each warpgroup writes its
//     probabilities as bf16 into a shared P tile [64 heads x 64 keys] (K-major, 128B swizzle).
//   - O += P V: warpgroup w owns value dims 256w .. 256w + 255 (m64n256k16, 128 f32 accumulators a
//     thread), A = the whole P tile from shared memory (4 k-steps of 16 keys), B = V read in place
//     from the gathered tile as an MN-major operand (transpose flag; dims contiguous in 64-dim slabs):
//     LBO = 8 KB (next 64-dim slab), SBO = 1 KB (next 8 keys), start + 2 KB per k-step.
// P goes through shared memory rather than registers because each warpgroup needs all 64 keys of P
// (its dims, both warpgroups' keys): the other half has to cross warpgroups through shared memory
// anyway, and one shared-A form keeps a single P layout (the 8 KB write per tile is minor).
// Finish: row sums of the two warpgroups added through shared memory; O / l is staged as bf16 in the
// (then free) Q buffer and written with coalesced 16-byte stores (rows of real heads only); lse as the
// mma.sync kernel.
//
// Synchronisation per tile (all block-wide barriers): (top) tile landed + previous tile fully
// consumed, (B1) row maxima, (B2) P tile. Every wgmma batch is waited for (wait_group 0) before the
// next barrier, so buffer reuse needs no further tracking. Shared memory: Q 72 KB + 2 tiles 144 KB +
// P 8 KB + small arrays = 225.5 KB (+ 1 KB to align the base to 1024 B for the swizzle).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/device_helpers.cuh"
#include "backend/cuda/dsa_bf16.h"
#include "backend/cuda/sparse_mla_wgmma.h"
#include "backend/cuda/wgmma.cuh"

namespace indexcache::cuda {

namespace {

constexpr int kDk = 576;
constexpr int kDv = 512;
constexpr int kHeadsPerBlock = 64;
constexpr int kTile = 64;                    // selected rows per tile
constexpr int kThreads = 256;                // two warpgroups
constexpr int kSlabs = kDk / 64;             // 9 column slabs of 64 dims (128 B)
constexpr int kSlabBytes = 64 * 128;         // 64 rows x 128 B
constexpr int kTileBytes = kSlabs * kSlabBytes;  // 73728
constexpr int kChunksPerThread = 64 * (kDk / 8) / kThreads;  // 18
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Shared memory layout, relative to the 1024-aligned base.
constexpr uint32_t kQOff = 0;                                  // Q [64 x 576], later the O staging
constexpr uint32_t kKvOff = kQOff + kTileBytes;                // 2 tile buffers
constexpr uint32_t kPOff = kKvOff + 2 * kTileBytes;            // P [64 x 64] bf16, one slab
constexpr uint32_t kMaxOff = kPOff + kSlabBytes;               // f32 [2 warpgroups][64 rows]
constexpr uint32_t kSumOff = kMaxOff + 2 * 64 * 4;             // f32 [2][64]
constexpr uint32_t kIdxOff = kSumOff + 2 * 64 * 4;             // int32 [2 buffers][64]
constexpr uint32_t kSmemUsed = kIdxOff + 2 * kTile * 4;
constexpr uint32_t kSmemBytes = kSmemUsed + 1024;              // slack to align the base
static_assert(kSmemBytes <= 227 * 1024, "sparse MLA wgmma block exceeds the sm_90 shared memory limit");
static_assert(kKvOff % 1024 == 0 && kPOff % 1024 == 0, "swizzled operands need 1024-byte alignment");
static_assert(kHeadsPerBlock * kDv * 2 <= kTileBytes, "O staging fits in the Q buffer");

struct WgParams {
  const __nv_bfloat16* q;   // [tokens][heads][576]
  const __nv_bfloat16* kv;  // [keys][kv_stride]
  int64_t kv_stride;
  const int32_t* indices;   // [tokens][num_selected]
  int num_selected;
  __nv_bfloat16* out;       // [tokens][heads][512]
  float* lse;               // [tokens][heads] or null
  int heads, groups;
  float scale_log2;         // scale * log2(e)
};

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Descriptor of an MN-major operand in the 128B swizzle (PTX ISA, "canonical layouts", MN-major
// SW128: ((T,8,m),(8,k)) : ((1,T,LBO),(8T,SBO))): 64 MN-elements of a K-row are one 128-byte
// swizzled row, 8 K-rows form a 1024-byte atom; LBO = distance between 64-element MN slabs,
// SBO = distance between 8-row K groups. Here LBO = 8 KB (next slab of 64 dims), SBO = 1 KB.
__device__ __forceinline__ uint64_t wgmma_desc_mn128(uint32_t saddr, uint32_t lbo, uint32_t sbo) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((saddr & 0x3FFFF) >> 4);
  d |= static_cast<uint64_t>((lbo & 0x3FFFF) >> 4) << 16;
  d |= static_cast<uint64_t>((sbo & 0x3FFFF) >> 4) << 32;
  d |= static_cast<uint64_t>(1) << 62;  // 128B swizzle
  return d;
}

// d[16] (+)= A (64 x 16, K-major, shared) * B (16 x 32, K-major, shared); scale_d 0: d = A * B.
__device__ __forceinline__ void wgmma_m64n32k16_ss(float (&d)[16], uint64_t da, uint64_t db, int scale_d) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
      "%16, %17, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "l"(da), "l"(db), "r"(scale_d)
      : "memory");
}

#define IC_WG_F8(i)                                                                                  \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
      "+f"(d[i + 6]), "+f"(d[i + 7])

// d[128] += A (64 x 16, K-major, shared) * B (16 x 256, MN-major = transposed, shared).
__device__ __forceinline__ void wgmma_m64n256k16_ss_tb(float (&d)[128], uint64_t da, uint64_t db) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
      "%128, %129, p, 1, 1, 0, 1;\n"
      "}\n"
      : IC_WG_F8(0), IC_WG_F8(8), IC_WG_F8(16), IC_WG_F8(24), IC_WG_F8(32), IC_WG_F8(40), IC_WG_F8(48),
        IC_WG_F8(56), IC_WG_F8(64), IC_WG_F8(72), IC_WG_F8(80), IC_WG_F8(88), IC_WG_F8(96), IC_WG_F8(104),
        IC_WG_F8(112), IC_WG_F8(120)
      : "l"(da), "l"(db), "r"(1)
      : "memory");
}
#undef IC_WG_F8

// Pins accumulator registers at this point of the program: the compiler may not move their reads
// or writes across it (keeps non-wgmma accesses out of the wgmma.fence .. wgmma.wait_group window).
template <int N>
__device__ __forceinline__ void pin_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

__device__ __forceinline__ void st_shared_b32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}

__global__ void __launch_bounds__(kThreads, 1) sparse_mla_wgmma_kernel(const WgParams p) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t pad = ((raw + 1023u) & ~1023u) - raw;
  unsigned char* smem = smem_raw + pad;
  const uint32_t base = raw + pad;
  const uint32_t q_s = base + kQOff;
  const uint32_t kv_s = base + kKvOff;
  const uint32_t p_s = base + kPOff;
  float* red_max = reinterpret_cast<float*>(smem + kMaxOff);  // [2][64]
  float* red_sum = reinterpret_cast<float*>(smem + kSumOff);  // [2][64]
  int* idx_s = reinterpret_cast<int*>(smem + kIdxOff);        // [2][64]

  const int tid = threadIdx.x, lane = tid & 31;
  const int wg = tid >> 7;                   // warpgroup: keys 32wg.. in S, dims 256wg.. in O
  const int wq = (tid >> 5) & 3;             // warp within the warpgroup: rows 16wq .. 16wq + 15
  const int r0 = wq * 16 + (lane >> 2);      // this thread's accumulator rows r0 and r0 + 8
  const int cq = 2 * (lane & 3);             // and columns 8i + cq, 8i + cq + 1
  const int grp = static_cast<int>(blockIdx.x % static_cast<unsigned>(p.groups));
  const int t = static_cast<int>(blockIdx.x / static_cast<unsigned>(p.groups));
  const int h0 = grp * kHeadsPerBlock;
  const int real = min(kHeadsPerBlock, p.heads - h0);  // rows of this block that are heads (>= 1)
  const int n_sel = p.num_selected;
  const int ntiles = (n_sel + kTile - 1) / kTile;
  const int32_t* sel = p.indices + static_cast<int64_t>(t) * n_sel;

  // Copy role: row gr of a 64-row operand, chunks c = gq + 4k (k = 0..17): slab k / 2, in-slab chunk
  // gq + 4 (k & 1), stored at in-slab chunk position (gq + 4 (k & 1)) ^ (gr & 7).
  const int gr = tid >> 2, gq = tid & 3;
  const uint32_t row_off = static_cast<uint32_t>(gr * 128);
  const uint32_t sw_even = static_cast<uint32_t>((gq ^ (gr & 7)) << 4);
  const uint32_t sw_odd = static_cast<uint32_t>(((gq + 4) ^ (gr & 7)) << 4);
  auto copy_row = [&](uint32_t dst, const __nv_bfloat16* src, int bytes) {
#pragma unroll
    for (int k = 0; k < kChunksPerThread; ++k)
      cp_async16(dst + (k >> 1) * kSlabBytes + row_off + ((k & 1) ? sw_odd : sw_even), src + (gq + 4 * k) * 8,
                 bytes);
  };
  auto load_index = [&](int tile) -> int {
    const int pos = tile * kTile + gr;
    return pos < n_sel ? __ldg(sel + pos) : -1;
  };
  auto issue_tile = [&](int buf, int j) {
    if (gq == 0) idx_s[buf * kTile + gr] = j;
    const __nv_bfloat16* src = p.kv + (j >= 0 ? static_cast<int64_t>(j) * p.kv_stride : 0);
    copy_row(kv_s + static_cast<uint32_t>(buf * kTileBytes), src, j >= 0 ? 16 : 0);
  };

  float o[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) o[i] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY};  // running max (log2 domain), same in both warpgroups
  float l_run[2] = {0.f, 0.f};              // this thread's share of the row sums

  int next_idx = -1;
  if (ntiles > 0) {
    // Q row gr: head h0 + gr, or zeros for a padding row (src-size 0: nothing is read; the address
    // given is that of the block's first head, a valid row).
    const bool q_real = gr < real;
    copy_row(q_s, p.q + (static_cast<int64_t>(t) * p.heads + h0 + (q_real ? gr : 0)) * kDk, q_real ? 16 : 0);
    issue_tile(0, load_index(0));
    cp_async_commit();
    next_idx = load_index(1);
  }

  // Descriptor bases; a byte offset `off` inside the region is added as off >> 4 (start-address
  // field, bits 0-13; every address stays below 2^18 so there is no carry out of the field).
  const uint64_t dq = wgmma_desc_k128(q_s);
  const uint64_t dp = wgmma_desc_k128(p_s);

  for (int it = 0; it < ntiles; ++it) {
    const int buf = it & 1;
    const uint32_t kvb = kv_s + static_cast<uint32_t>(buf * kTileBytes);
    cp_async_wait<0>();
    fence_proxy_async_smem();
    __syncthreads();  // (top) tile `it` visible to all and to wgmma; tile it - 1 fully consumed

    // ---- S = Q K^T for keys 32wg .. 32wg + 31 (asynchronous; the gather below overlaps it)
    float s[16];
    {
      const uint64_t dk = wgmma_desc_k128(kvb + static_cast<uint32_t>(wg * 32 * 128));
      pin_regs(s);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kDk / 16; ++ks) {
        const uint64_t off = static_cast<uint64_t>(((ks >> 2) * kSlabBytes + (ks & 3) * 32) >> 4);
        wgmma_m64n32k16_ss(s, dq + off, dk + off, ks > 0 ? 1 : 0);
      }
      wgmma_commit();
    }
    if (it + 1 < ntiles) issue_tile(buf ^ 1, next_idx);
    cp_async_commit();
    if (it + 2 < ntiles) next_idx = load_index(it + 2);
    wgmma_wait<0>();
    pin_regs(s);

    // ---- scale, mask, this warpgroup's row maxima
    const int* valid = idx_s + buf * kTile + wg * 32;
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const bool v0 = valid[8 * i + cq] >= 0, v1 = valid[8 * i + cq + 1] >= 0;
      s[4 * i + 0] = v0 ? s[4 * i + 0] * p.scale_log2 : -INFINITY;
      s[4 * i + 1] = v1 ? s[4 * i + 1] * p.scale_log2 : -INFINITY;
      s[4 * i + 2] = v0 ? s[4 * i + 2] * p.scale_log2 : -INFINITY;
      s[4 * i + 3] = v1 ? s[4 * i + 3] * p.scale_log2 : -INFINITY;
      mx0 = fmaxf(mx0, fmaxf(s[4 * i + 0], s[4 * i + 1]));
      mx1 = fmaxf(mx1, fmaxf(s[4 * i + 2], s[4 * i + 3]));
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    if ((lane & 3) == 0) {
      red_max[wg * 64 + r0] = mx0;
      red_max[wg * 64 + r0 + 8] = mx1;
    }
    __syncthreads();  // (B1) row maxima of both warpgroups

    // ---- probabilities with the common running max; P (bf16) into the shared tile
    float alpha[2];
    {
      const float mt0 = fmaxf(m_run[0], fmaxf(red_max[r0], red_max[64 + r0]));
      const float mt1 = fmaxf(m_run[1], fmaxf(red_max[r0 + 8], red_max[64 + r0 + 8]));
      const float mu0 = mt0 == -INFINITY ? 0.f : mt0;  // nothing valid yet: p = 0, alpha = 0
      const float mu1 = mt1 == -INFINITY ? 0.f : mt1;
      alpha[0] = exp2f(m_run[0] - mu0);
      alpha[1] = exp2f(m_run[1] - mu1);
      m_run[0] = mt0;
      m_run[1] = mt1;
      float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        s[4 * i + 0] = exp2f(s[4 * i + 0] - mu0);
        s[4 * i + 1] = exp2f(s[4 * i + 1] - mu0);
        s[4 * i + 2] = exp2f(s[4 * i + 2] - mu1);
        s[4 * i + 3] = exp2f(s[4 * i + 3] - mu1);
        sum0 += s[4 * i + 0] + s[4 * i + 1];
        sum1 += s[4 * i + 2] + s[4 * i + 3];
      }
      l_run[0] = l_run[0] * alpha[0] + sum0;
      l_run[1] = l_run[1] * alpha[1] + sum1;
    }
    // Row r0 (and r0 + 8, same r & 7), keys 32wg + 8i + cq, +1: chunk 4wg + i, byte 2cq.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t a = p_s + static_cast<uint32_t>(r0 * 128 + (((4 * wg + i) ^ (r0 & 7)) << 4) + 2 * cq);
      st_shared_b32(a, pack_bf16(s[4 * i + 0], s[4 * i + 1]));
      st_shared_b32(a + 8 * 128, pack_bf16(s[4 * i + 2], s[4 * i + 3]));
    }
    // Rescale O (skipped while no row max of this warp moved: the common case after a few tiles).
    if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        o[4 * j + 0] *= alpha[0];
        o[4 * j + 1] *= alpha[0];
        o[4 * j + 2] *= alpha[1];
        o[4 * j + 3] *= alpha[1];
      }
    }
    fence_proxy_async_smem();
    __syncthreads();  // (B2) the whole P tile, visible to wgmma

    // ---- O[:, 256wg ..] += P V: 4 k-steps of 16 keys; V = slabs 4wg .. 4wg + 3 of the tile
    {
      const uint64_t dv = wgmma_desc_mn128(kvb + static_cast<uint32_t>(wg * 4 * kSlabBytes), kSlabBytes, 1024);
      pin_regs(o);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kTile / 16; ++kk)
        wgmma_m64n256k16_ss_tb(o, dp + static_cast<uint64_t>((kk * 32) >> 4),
                               dv + static_cast<uint64_t>((kk * 16 * 128) >> 4));
      wgmma_commit();
      wgmma_wait<0>();
      pin_regs(o);
    }
  }

  // ---- finish: row sums of both warpgroups, normalise, stage bf16 O in the Q buffer, store.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 1);
    l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 2);
  }
  if ((lane & 3) == 0) {
    red_sum[wg * 64 + r0] = l_run[0];
    red_sum[wg * 64 + r0 + 8] = l_run[1];
  }
  __syncthreads();  // row sums; every wgmma and cp.async of the block is done (Q buffer free)
  const int64_t th0 = static_cast<int64_t>(t) * p.heads + h0;  // (token, first head of the block)
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = r0 + 8 * i;
    const float l = red_sum[r] + red_sum[64 + r];
    const float inv = l > 0.f ? 1.f / l : 0.f;
    if (p.lse != nullptr && wg == 0 && (lane & 3) == 0 && r < real)
      p.lse[th0 + r] = l > 0.f ? (m_run[i] + log2f(l)) * kLn2 : -INFINITY;
    // Row r, dims 256wg + 8j + cq, +1: 16-byte chunk 32wg + j of the 1024-byte staging row, stored
    // at chunk position (32wg + j) ^ (r & 7).
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      const uint32_t a = q_s + static_cast<uint32_t>(r * 1024 + (((32 * wg + j) ^ (r & 7)) << 4) + 2 * cq);
      st_shared_b32(a, pack_bf16(o[4 * j + 2 * i] * inv, o[4 * j + 2 * i + 1] * inv));
    }
  }
  __syncthreads();
  // 64 rows x 64 chunks of 16 B: thread tid copies chunk tid % 64 of rows tid / 64 + 4k, for the
  // rows that are heads (r < real; the padding rows of the last group are not stored).
#pragma unroll 4
  for (int k = 0; k < 16; ++k) {
    const int r = (tid >> 6) + 4 * k, c = tid & 63;
    if (r >= real) break;  // rows increase with k
    uint4 v;
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(q_s + static_cast<uint32_t>(r * 1024 + ((c ^ (r & 7)) << 4))));
    *reinterpret_cast<uint4*>(p.out + (th0 + r) * kDv + c * 8) = v;
  }
}

}  // namespace

bool sparse_mla_wgmma_applies(const SparseMlaParams& p, int splits) {
  return splits == 1 && p.heads >= 1 && p.heads <= 2 * kHeadsPerBlock && p.dim_k == kDk && p.dim_v == kDv;
}

void sparse_mla_wgmma_bf16(const SparseMlaParams& p, void* stream_ptr) {
  if (!sparse_mla_wgmma_applies(p, 1))
    throw_runtime("sparse_mla_wgmma_bf16", "needs one split, 1 <= heads <= 128, dim_k 576 and dim_v 512");
  if (p.tokens == 0) return;
  WgParams kp{};
  kp.q = static_cast<const __nv_bfloat16*>(p.q);
  kp.kv = static_cast<const __nv_bfloat16*>(p.kv);
  kp.kv_stride = p.kv_stride;
  kp.indices = p.indices;
  kp.num_selected = p.num_selected;
  kp.out = static_cast<__nv_bfloat16*>(p.out);
  kp.lse = p.lse;
  kp.heads = p.heads;
  kp.groups = (p.heads + kHeadsPerBlock - 1) / kHeadsPerBlock;  // the last one padded to 64 rows
  kp.scale_log2 = p.scale * kLog2e;
  const int64_t blocks = static_cast<int64_t>(p.tokens) * kp.groups;
  if (blocks > INT32_MAX) throw_runtime("sparse_mla_wgmma_bf16", "too many tokens");
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  IC_CUDA_CHECK(cudaFuncSetAttribute(sparse_mla_wgmma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(kSmemBytes)));
  sparse_mla_wgmma_kernel<<<static_cast<unsigned>(blocks), kThreads, kSmemBytes, stream>>>(kp);
  IC_CUDA_CHECK_LAUNCH("sparse_mla_wgmma_kernel");
}

}  // namespace indexcache::cuda
