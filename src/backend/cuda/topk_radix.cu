// Row-wise top-k by radix selection, no sort: one block per row.
//
// Keys: order_key() maps a float to a uint32 whose unsigned order is the float order (NaN -> 0, as
// on the CPU). The CPU backend's order is the 64-bit composite (key << 32 | ~index): score
// descending, then index ascending. The k selected elements are exactly the k largest composites.
//
// 1. Global refinement: histogram passes over the row on the key's digits (12, 10, 10 bits, most
//    significant first, counting only elements that match the digits fixed so far) narrow the
//    prefix that holds the k-th largest key, until the elements matching it fit the shared buffer
//    (kCap) - usually after the first pass - or all 32 bits are fixed. `krem` is how many of the
//    matching elements belong to the top k; every element above the prefix does.
// 2. Collect pass: elements above the prefix go straight to the output; matching ones go to the
//    shared buffer as (key, index). If all matching ones are needed, they go straight out too.
// 3. Buffer passes: radix select on the 64-bit composites of the buffer (11-bit digits) until the
//    matching count equals krem (composites are unique, so this terminates); then every buffered
//    composite >= the final prefix is output. Ties at the threshold go to the lower indices because
//    the index is part of the composite.
// Fallback when more than kCap elements share the full 32-bit threshold key (heavy exact ties): an
// ordered pass over the row (block scan of tie counts, index order) takes the krem lowest-index ties.
// Rows with valid <= k get 0..valid-1, then -1. Output order within a row: elements above the final
// 32-bit prefix in index order, then the selected threshold elements in index order (block scans, no
// atomics), so every run writes the same list.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/dsa_bf16.h"

namespace indexcache::cuda {

namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxBins = 4096;  // first global digit: 12 bits
constexpr int kCap = 8192;      // shared candidate buffer entries
constexpr int kMaxK = 2048;
constexpr int kPer = 8;                    // consecutive elements per thread in ordered passes
constexpr int kStripe = kPer * kThreads;  // 4096 <= 65535: per-stripe counts fit 16 bits
constexpr unsigned kFull = 0xFFFFFFFFu;
constexpr size_t kSmemBytes = kMaxBins * sizeof(int) + kCap * 2 * sizeof(uint32_t);

__device__ __forceinline__ uint32_t order_key(float f) {
  if (f != f) return 0;
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ unsigned long long composite(uint32_t key, uint32_t index) {
  return (static_cast<unsigned long long>(key) << 32) | (0xFFFFFFFFu - index);
}

struct Shared {
  int warp_sums[kWarps];
  int bin, above, count;  // result of select_bin
};

// Inclusive sum of v over the block in thread order (all threads call); *total = block sum.
__device__ int block_inclusive_sum(int v, Shared& sh, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int n = __shfl_up_sync(kFull, v, o);
    if (lane >= o) v += n;
  }
  if (lane == 31) sh.warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    int s = lane < kWarps ? sh.warp_sums[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int n = __shfl_up_sync(kFull, s, o);
      if (lane >= o) s += n;
    }
    if (lane < kWarps) sh.warp_sums[lane] = s;
  }
  __syncthreads();
  const int res = v + (warp > 0 ? sh.warp_sums[warp - 1] : 0);
  *total = sh.warp_sums[kWarps - 1];
  __syncthreads();  // warp_sums is reused by the next call
  return res;
}

// Finds the bin b of hist[0..nb) holding the krem-th largest element (bins ordered high to low):
// sh.bin = b, sh.above = count in bins > b (< krem), sh.count = hist[b] (>= krem - above).
// Precondition: sum(hist) >= krem >= 1. All threads call; results are visible on return.
__device__ void select_bin(const int* hist, int nb, int krem, Shared& sh) {
  const int chunk = (nb + kThreads - 1) / kThreads;
  const int top = nb - 1 - static_cast<int>(threadIdx.x) * chunk;  // this thread's bins: top, top-1, ...
  int c = 0;
  for (int j = 0; j < chunk; ++j)
    if (top - j >= 0) c += hist[top - j];
  int total;
  const int incl = block_inclusive_sum(c, sh, &total);
  const int excl = incl - c;
  if (excl < krem && krem <= incl) {  // exactly one thread
    int above = excl;
    for (int j = 0; j < chunk; ++j) {
      const int b = top - j;
      if (above + hist[b] >= krem) {
        sh.bin = b;
        sh.above = above;
        sh.count = hist[b];
        break;
      }
      above += hist[b];
    }
  }
  __syncthreads();
}

// Calls f(index, key) for every element of row[0..n), any order, 16-byte loads for the aligned body.
template <class F>
__device__ __forceinline__ void for_each_key(const float* __restrict__ row, int n, F&& f) {
  const int tid = threadIdx.x;
  const int head = min(n, static_cast<int>(((16 - (reinterpret_cast<uintptr_t>(row) & 15)) & 15) / 4));
  if (tid < head) f(tid, order_key(row[tid]));
  const float4* body = reinterpret_cast<const float4*>(row + head);
  const int nv = (n - head) / 4;
  int v = tid;
  for (; v + 3 * kThreads < nv; v += 4 * kThreads) {
    float4 x[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) x[u] = __ldg(body + v + u * kThreads);
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int i = head + 4 * (v + u * kThreads);
      f(i, order_key(x[u].x));
      f(i + 1, order_key(x[u].y));
      f(i + 2, order_key(x[u].z));
      f(i + 3, order_key(x[u].w));
    }
  }
  for (; v < nv; v += kThreads) {
    const float4 x = __ldg(body + v);
    const int i = head + 4 * v;
    f(i, order_key(x.x));
    f(i + 1, order_key(x.y));
    f(i + 2, order_key(x.z));
    f(i + 3, order_key(x.w));
  }
  for (int i = head + 4 * nv + tid; i < n; i += kThreads) f(i, order_key(row[i]));
}

__global__ void __launch_bounds__(kThreads, 2)
topk_radix_kernel(const float* __restrict__ scores, int64_t stride, const int32_t* __restrict__ valid,
                  int32_t* __restrict__ indices, int k) {
  extern __shared__ __align__(16) unsigned char smem[];
  int* hist = reinterpret_cast<int*>(smem);                     // [kMaxBins]
  uint32_t* bkey = reinterpret_cast<uint32_t*>(hist + kMaxBins);  // [kCap]
  uint32_t* bidx = bkey + kCap;                                  // [kCap]
  __shared__ Shared sh;

  const int tid = threadIdx.x;
  const int t = blockIdx.x;
  const float* row = scores + static_cast<int64_t>(t) * stride;
  int32_t* out = indices + static_cast<int64_t>(t) * k;
  const int n = valid[t];
  if (n <= k) {
    for (int i = tid; i < k; i += kThreads) out[i] = i < n ? i : -1;
    return;
  }
  // Outputs are written in a deterministic order (never by atomics): the elements above the final
  // prefix in index order, then the selected threshold elements in index order. Runs therefore give
  // bit-identical index lists, so consumers that accumulate over the list (sparse attention) are
  // reproducible: a CUDA-graph replay equals the eager step.
  auto put = [&](int slot, int i) {
    if (slot < k) out[slot] = i;  // exactly k writes happen; the bound is a safety net
  };

  // --- 1. global refinement of the key prefix ---
  uint32_t prefix = 0, mask = 0;
  int fixed = 0, krem = k, cnt = n;
#pragma unroll 1
  while (cnt > kCap && cnt > krem && fixed < 32) {
    const int d = fixed == 0 ? 12 : 10;  // 12 + 10 + 10 = 32
    const int shift = 32 - fixed - d;
    const int nb = 1 << d;
    for (int i = tid; i < nb; i += kThreads) hist[i] = 0;
    __syncthreads();
    for_each_key(row, n, [&](int, uint32_t key) {
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & (nb - 1)], 1);
    });
    __syncthreads();
    select_bin(hist, nb, krem, sh);
    prefix |= static_cast<uint32_t>(sh.bin) << shift;
    mask |= static_cast<uint32_t>(nb - 1) << shift;
    krem -= sh.above;
    cnt = sh.count;
    fixed += d;
    __syncthreads();  // sh is rewritten by the next select_bin
  }

  if (cnt == krem || cnt <= kCap) {
    // --- 2. collect, in stripes of kStripe elements (kPer consecutive ones per thread, so thread order
    // is index order): above the prefix -> out; matching -> out (all needed) or the buffer, both
    // compacted in index order by one block scan per stripe (low 16 bits: out, high: buffer). ---
    const bool take_all = cnt == krem;
    int out_base = 0, buf_base = 0;  // block-uniform
#pragma unroll 1
    for (int base = 0; base < n; base += kStripe) {
      uint32_t key[kPer];
      int v = 0;
#pragma unroll
      for (int u = 0; u < kPer; ++u) {
        const int i = base + kPer * tid + u;
        key[u] = i < n ? order_key(row[i]) : 0u;
        const uint32_t topbits = key[u] & mask;
        if (i < n && (topbits > prefix || (take_all && topbits == prefix))) v += 1;
        else if (i < n && topbits == prefix) v += 1 << 16;
      }
      int total;
      const int excl = block_inclusive_sum(v, sh, &total) - v;
      int o = out_base + (excl & 0xFFFF), q = buf_base + (excl >> 16);
#pragma unroll
      for (int u = 0; u < kPer; ++u) {
        const int i = base + kPer * tid + u;
        const uint32_t topbits = key[u] & mask;
        if (i < n && (topbits > prefix || (take_all && topbits == prefix))) {
          put(o++, i);
        } else if (i < n && topbits == prefix) {
          if (q < kCap) {
            bkey[q] = key[u];
            bidx[q] = static_cast<uint32_t>(i);
          }
          ++q;
        }
      }
      out_base += total & 0xFFFF;
      buf_base += total >> 16;
    }
    __syncthreads();
    if (take_all) return;

    // --- 3. radix select on the buffered composites ---
    const int nbuf = buf_base;  // == cnt <= kCap
    unsigned long long cprefix = static_cast<unsigned long long>(prefix) << 32;
    unsigned long long cmask = static_cast<unsigned long long>(mask) << 32;
    int rem = 64 - fixed;  // low bits of the composite not fixed yet
#pragma unroll 1
    while (cnt > krem && rem > 0) {  // block-uniform; composites are unique: cnt == krem by rem == 0
      const int d = min(11, rem);
      const int shift = rem - d;
      const int nb = 1 << d;
      for (int i = tid; i < nb; i += kThreads) hist[i] = 0;
      __syncthreads();
      for (int e = tid; e < nbuf; e += kThreads) {
        const unsigned long long c = composite(bkey[e], bidx[e]);
        if ((c & cmask) == cprefix) atomicAdd(&hist[static_cast<int>((c >> shift) & (nb - 1))], 1);
      }
      __syncthreads();
      select_bin(hist, nb, krem, sh);
      cprefix |= static_cast<unsigned long long>(sh.bin) << shift;
      cmask |= static_cast<unsigned long long>(nb - 1) << shift;
      krem -= sh.above;
      cnt = sh.count;
      rem = shift;
      __syncthreads();
    }
    // The buffer is in index order; compact its selected entries after the out_base outputs.
#pragma unroll 1
    for (int base = 0; base < nbuf; base += kStripe) {
      int v = 0;
#pragma unroll
      for (int u = 0; u < kPer; ++u) {
        const int e = base + kPer * tid + u;
        if (e < nbuf && (composite(bkey[e], bidx[e]) & cmask) >= cprefix) ++v;
      }
      int total;
      int o = out_base + block_inclusive_sum(v, sh, &total) - v;
#pragma unroll
      for (int u = 0; u < kPer; ++u) {
        const int e = base + kPer * tid + u;
        if (e < nbuf && (composite(bkey[e], bidx[e]) & cmask) >= cprefix) put(o++, static_cast<int32_t>(bidx[e]));
      }
      out_base += total;
    }
    return;
  }

  // --- fallback: more than kCap elements equal the threshold key `prefix` (all 32 bits fixed) ---
  // Stripes of 4 * kThreads elements; thread tid owns 4 consecutive ones, so thread order within a
  // stripe is index order. One block scan of tie counts ranks the ties by index (the krem lowest
  // win); a second one places the selected elements in index order.
  const uint32_t thr = prefix;
  int tie_base = 0, out_base = 0;  // block-uniform
#pragma unroll 1
  for (int base = 0; base < n; base += 4 * kThreads) {
    uint32_t key[4];
    int eq = 0;
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int i = base + 4 * tid + u;
      key[u] = i < n ? order_key(row[i]) : 0u;
      eq += (i < n && key[u] == thr) ? 1 : 0;
    }
    int total;
    const int incl = block_inclusive_sum(eq, sh, &total);
    int rank = tie_base + incl - eq;
    bool take[4];
    int nsel = 0;
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int i = base + 4 * tid + u;
      take[u] = false;
      if (i < n && key[u] > thr) take[u] = true;
      if (i < n && key[u] == thr) take[u] = rank++ < krem;
      nsel += take[u] ? 1 : 0;
    }
    tie_base += total;
    int sel_total;
    int o = out_base + block_inclusive_sum(nsel, sh, &sel_total) - nsel;
#pragma unroll
    for (int u = 0; u < 4; ++u)
      if (take[u]) put(o++, base + 4 * tid + u);
    out_base += sel_total;
  }
}

}  // namespace

void topk_radix(const TopkRadixParams& p, void* stream) {
  const char* what = "cuda topk_radix";
  if (p.tokens < 0) throw_runtime(what, "tokens must be >= 0 (got " + std::to_string(p.tokens) + ")");
  if (p.k < 1 || p.k > kMaxK)
    throw_runtime(what, "k must be in 1.." + std::to_string(kMaxK) + " (got " + std::to_string(p.k) + ")");
  if (p.tokens == 0) return;
  if (!p.scores || !p.valid || !p.indices) throw_runtime(what, "null pointer argument");
  if (p.scores_stride < 0) throw_runtime(what, "negative scores_stride");
  static const bool attr_set = [] {
    IC_CUDA_CHECK(cudaFuncSetAttribute(topk_radix_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(kSmemBytes)));
    return true;
  }();
  (void)attr_set;
  topk_radix_kernel<<<p.tokens, kThreads, kSmemBytes, static_cast<cudaStream_t>(stream)>>>(
      p.scores, p.scores_stride, p.valid, p.indices, p.k);
  IC_CUDA_CHECK_LAUNCH("topk_radix launch");
}

}  // namespace indexcache::cuda
