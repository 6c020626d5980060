// Row-wise top-k by radix selection (no sort of the row): one block per row.
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
// Rows with valid <= k get 0..valid-1, then -1. Output order within a row: the elements above the
// prefix reached by the global refinement in index order, then the selected ones that match it in
// index order (one index-ordered list when every matching element is selected, and in the heavy-tie
// fallback), so every run writes the same list.
// Long rows (valid >= kSampleMin, the prefill case) first try a sampled single pass (see
// single_block_row): a sample of the row bounds the first digit of the threshold from below, the one
// pass over the row counts and buffers only the few elements at or above that bound, and the finish
// runs in shared memory, sorting the k selected by (class, index) to give the same list as above.
// When the sample misleads or the candidates do not fit, the steps above continue from the first
// pass's (exact) result or start over, so the lists never depend on the path.
// Few long rows (decode) with a caller scratch: the first pass and the filtering are spread over many
// blocks per row (see "Few rows" below); the final per-row block gives the same lists.
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
// Sampled single pass (rows of valid >= kSampleMin): kSampleChunks runs of kSampleLen consecutive
// elements spread evenly over the row estimate a lower bound of the threshold bin; the full pass then
// counts and buffers (kFastCap entries) only the elements at or above it.
constexpr int kSampleLen = 32;  // one warp's coalesced 128-byte line per run
constexpr int kSampleChunks = 256;
constexpr int kSample = kSampleLen * kSampleChunks;  // 8192 = 16 loads per thread
constexpr int kSampleMin = 32768;
constexpr int kFastCap = kCap + kMaxK;
constexpr size_t kSmemBytes = kMaxBins * sizeof(int) + kFastCap * 2 * sizeof(uint32_t);
static_assert(kSample % kThreads == 0 && kThreads % kSampleLen == 0, "sample layout");
static_assert(kSampleMin >= 2 * kSampleChunks * kSampleLen, "sample runs must not overlap");
static_assert(kMaxBins * sizeof(int) >= kMaxK * sizeof(uint32_t), "sort keys reuse the histogram");

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
  int nbuf, nsel;         // sampled single pass: buffer and output slot counters
};

// Inclusive sum of v over the block of NT threads in thread order (all threads call); *total = block sum.
template <int NT = kThreads>
__device__ int block_inclusive_sum(int v, Shared& sh, int* total) {
  constexpr int kW = NT / 32;
  static_assert(NT % 32 == 0 && kW <= kWarps, "block size");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int n = __shfl_up_sync(kFull, v, o);
    if (lane >= o) v += n;
  }
  if (lane == 31) sh.warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    int s = lane < kW ? sh.warp_sums[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int n = __shfl_up_sync(kFull, s, o);
      if (lane >= o) s += n;
    }
    if (lane < kW) sh.warp_sums[lane] = s;
  }
  __syncthreads();
  const int res = v + (warp > 0 ? sh.warp_sums[warp - 1] : 0);
  *total = sh.warp_sums[kW - 1];
  __syncthreads();  // warp_sums is reused by the next call
  return res;
}

// Finds the bin b of hist[0..nb) holding the krem-th largest element (bins ordered high to low):
// sh.bin = b, sh.above = count in bins > b (< krem), sh.count = hist[b] (>= krem - above).
// Precondition: sum(hist) >= krem >= 1. All NT threads call; results are visible on return.
template <int NT = kThreads>
__device__ void select_bin(const int* hist, int nb, int krem, Shared& sh) {
  const int chunk = (nb + NT - 1) / NT;
  const int top = nb - 1 - static_cast<int>(threadIdx.x) * chunk;  // this thread's bins: top, top-1, ...
  int c = 0;
  for (int j = 0; j < chunk; ++j)
    if (top - j >= 0) c += hist[top - j];
  int total;
  const int incl = block_inclusive_sum<NT>(c, sh, &total);
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

// Calls f(index, key) for every element of row[0..n), any order, 16-byte loads for the aligned body:
// U of them in flight per thread, then T at a time for the last ones (fewer than U per thread).
template <int U = 4, int T = 1, class F>
__device__ __forceinline__ void for_each_key(const float* __restrict__ row, int n, F&& f) {
  const int tid = threadIdx.x;
  const int head = min(n, static_cast<int>(((16 - (reinterpret_cast<uintptr_t>(row) & 15)) & 15) / 4));
  if (tid < head) f(tid, order_key(row[tid]));
  const float4* body = reinterpret_cast<const float4*>(row + head);
  const int nv = (n - head) / 4;
  int v = tid;
  for (; v + (U - 1) * kThreads < nv; v += U * kThreads) {
    float4 x[U];
#pragma unroll
    for (int u = 0; u < U; ++u) x[u] = __ldg(body + v + u * kThreads);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int i = head + 4 * (v + u * kThreads);
      f(i, order_key(x[u].x));
      f(i + 1, order_key(x[u].y));
      f(i + 2, order_key(x[u].z));
      f(i + 3, order_key(x[u].w));
    }
  }
  for (; v < nv; v += T * kThreads) {
    float4 x[T];
#pragma unroll
    for (int u = 0; u < T; ++u)
      if (v + u * kThreads < nv) x[u] = __ldg(body + v + u * kThreads);
#pragma unroll
    for (int u = 0; u < T; ++u) {
      if (v + u * kThreads < nv) {
        const int i = head + 4 * (v + u * kThreads);
        f(i, order_key(x[u].x));
        f(i + 1, order_key(x[u].y));
        f(i + 2, order_key(x[u].z));
        f(i + 3, order_key(x[u].w));
      }
    }
  }
  for (int i = head + 4 * nv + tid; i < n; i += kThreads) f(i, order_key(row[i]));
}

// Radix select on the 64-bit composites of the buffer bkey/bidx[0..nbuf): among those matching
// (cprefix, cmask) - `cnt` of them, of which `krem` belong to the top k - narrows the prefix with
// 11-bit digits of the `rem` low bits not fixed yet, until exactly krem composites match (composites
// are unique, so this terminates). On return every selected buffered composite c satisfies
// (c & cmask) >= cprefix, and no other one does. hist needs 2048 ints. Block of kThreads, all call.
__device__ void refine_composites(const uint32_t* bkey, const uint32_t* bidx, int nbuf, unsigned long long& cprefix,
                                  unsigned long long& cmask, int rem, int krem, int cnt, int* hist, Shared& sh) {
  const int tid = threadIdx.x;
#pragma unroll 1
  while (cnt > krem && rem > 0) {  // block-uniform
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
}

// Bitonic sort (ascending) of s[0..np) in shared memory, np a power of two; all threads call.
__device__ void bitonic_sort(uint32_t* s, int np) {
#pragma unroll 1
  for (int size = 2; size <= np; size <<= 1) {
#pragma unroll 1
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < np / 2; t += kThreads) {
        const int i = 2 * t - (t & (stride - 1));  // bit `stride` of i is clear; partner i + stride
        const uint32_t a = s[i], b = s[i + stride];
        if ((a > b) == ((i & size) == 0)) {
          s[i] = b;
          s[i + stride] = a;
        }
      }
      __syncthreads();
    }
  }
}

// The single-block algorithm for one row (n = valid > k) on a block of kThreads threads from the
// state after `fixed` bits of global refinement (fixed = 0: from scratch; prefix/mask: the fixed
// bits, krem of the cnt elements matching them belong to the top k); smem holds kSmemBytes.
__device__ void finish_from(const float* __restrict__ row, int n, int32_t* __restrict__ out, int k,
                            unsigned char* smem, Shared& sh, uint32_t prefix, uint32_t mask, int fixed, int krem,
                            int cnt) {
  int* hist = reinterpret_cast<int*>(smem);                     // [kMaxBins]
  uint32_t* bkey = reinterpret_cast<uint32_t*>(hist + kMaxBins);  // [kCap]
  uint32_t* bidx = bkey + kCap;                                  // [kCap]
  const int tid = threadIdx.x;
  // Outputs are written in a deterministic order (never by atomics): the elements above the final
  // prefix in index order, then the selected threshold elements in index order. Runs therefore give
  // bit-identical index lists, so consumers that accumulate over the list (sparse attention) are
  // reproducible: a CUDA-graph replay equals the eager step.
  auto put = [&](int slot, int i) {
    if (slot < k) out[slot] = i;  // exactly k writes happen; the bound is a safety net
  };

  // --- 1. global refinement of the key prefix ---
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
    refine_composites(bkey, bidx, nbuf, cprefix, cmask, 64 - fixed, krem, cnt, hist, sh);
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

// The whole single-block algorithm for one row (n = valid > k) on a block of kThreads threads;
// smem holds kSmemBytes. Long rows take the sampled single pass:
//   0. sample: a 12-bit first-digit histogram of kSample elements (kSampleChunks runs spread evenly)
//      gives lo, the bin where the sample's count from the top reaches 2 r + 32 (r: the sample's
//      expected share of the top k), so the row's k-th largest key very likely has a first digit
//      >= lo, while only a few per cent of the elements do;
//   1. one pass over the row counts the first digits >= lo (the other bins stay 0: the histogram is
//      exact where select_bin looks, so bin / above / count equal the full pass's whenever at least
//      k elements were counted) and, when the sample predicts they fit, appends those elements to
//      the buffer (any order: shared atomics);
//   2. all of them buffered and the threshold bin fits the buffer (or all of it is needed): radix
//      select on the buffered composites as in finish_from, then the k selected entries are sorted
//      by (class, index) with class 0 for first digit > threshold bin, 1 for the threshold bin (0 for
//      all when the whole bin is needed): exactly finish_from's output order.
// Otherwise finish_from continues from the state after the first digit (a second pass collects), or,
// when fewer than k elements were counted (the sample misled), runs from scratch.
__device__ void single_block_row(const float* __restrict__ row, int n, int32_t* __restrict__ out, int k,
                                 unsigned char* smem, Shared& sh) {
  if (n < kSampleMin) {
    finish_from(row, n, out, k, smem, sh, 0, 0, 0, k, n);
    return;
  }
  int* hist = reinterpret_cast<int*>(smem);                       // [kMaxBins]
  uint32_t* bkey = reinterpret_cast<uint32_t*>(hist + kMaxBins);  // [kFastCap]
  uint32_t* bidx = bkey + kFastCap;                               // [kFastCap]
  const int tid = threadIdx.x;

  // --- 0. sample ---
  for (int i = tid; i < kMaxBins; i += kThreads) hist[i] = 0;
  __syncthreads();
  {
    const int step = (n - kSampleLen) / (kSampleChunks - 1);  // >= kSampleLen: runs are disjoint, in the row
    float x[kSample / kThreads];
#pragma unroll
    for (int j = 0; j < kSample / kThreads; ++j) {
      const int e = j * kThreads + tid;  // sample element: run e / kSampleLen, offset e % kSampleLen
      x[j] = __ldg(row + (e / kSampleLen) * step + (e % kSampleLen));
    }
#pragma unroll
    for (int j = 0; j < kSample / kThreads; ++j) atomicAdd(&hist[order_key(x[j]) >> 20], 1);
  }
  __syncthreads();
  const int r = static_cast<int>((static_cast<int64_t>(k) * kSample + n - 1) / n);  // <= 512
  select_bin(hist, kMaxBins, 2 * r + 32, sh);  // 2 r + 32 <= 1056 <= kSample
  const uint32_t lo_key = static_cast<uint32_t>(sh.bin) << 20;
  // Expected number of elements with first digit >= lo: the sample's count there times n / kSample.
  const bool buffering = static_cast<int64_t>(sh.above + sh.count) * n <= static_cast<int64_t>(kFastCap) * kSample;
  __syncthreads();  // sh read by all before it is rewritten
  for (int i = tid; i < kMaxBins; i += kThreads) hist[i] = 0;
  if (tid == 0) sh.nbuf = 0;
  __syncthreads();

  // --- 1. the pass over the row ---
  for_each_key<8, 4>(row, n, [&](int i, uint32_t key) {
    if (key >= lo_key) {
      atomicAdd(&hist[key >> 20], 1);
      if (buffering) {
        const int slot = atomicAdd(&sh.nbuf, 1);
        if (slot < kFastCap) {
          bkey[slot] = key;
          bidx[slot] = static_cast<uint32_t>(i);
        }
      }
    }
  });
  __syncthreads();
  int total;
  {
    constexpr int kPerThread = kMaxBins / kThreads;
    int c = 0;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) c += hist[tid * kPerThread + j];
    block_inclusive_sum(c, sh, &total);  // ends with a barrier
  }
  if (total < k) {  // block-uniform: the k-th largest key lies below lo
    finish_from(row, n, out, k, smem, sh, 0, 0, 0, k, n);
    return;
  }
  select_bin(hist, kMaxBins, k, sh);
  const int bin = sh.bin, above = sh.above, cnt = sh.count, nbuf = sh.nbuf;
  const int krem = k - above;
  if ((cnt > kCap && cnt > krem) || !buffering || nbuf > kFastCap) {  // block-uniform
    finish_from(row, n, out, k, smem, sh, static_cast<uint32_t>(bin) << 20, 0xFFF00000u, 12, krem, cnt);
    return;
  }

  // --- 2. finish in shared memory: every element with first digit >= lo is buffered ---
  const bool take_all = cnt == krem;
  unsigned long long cprefix = static_cast<unsigned long long>(bin) << 52;
  unsigned long long cmask = 0xFFFull << 52;
  // Entries of other bins never match the prefix, so they do not disturb the selection.
  refine_composites(bkey, bidx, nbuf, cprefix, cmask, 52, krem, cnt, hist, sh);
  __syncthreads();  // hist is free (also when refine_composites had nothing to do)
  uint32_t* skeys = reinterpret_cast<uint32_t*>(hist);  // [np] sort keys: class << 31 | index
  int np = 1;
  while (np < k) np <<= 1;
  for (int i = k + tid; i < np; i += kThreads) skeys[i] = 0xFFFFFFFFu;
  if (tid == 0) sh.nsel = 0;
  __syncthreads();
  // Selected: first digit > bin (above the prefix), or in the bin and >= the final composite prefix;
  // exactly above + krem = k entries.
  const uint32_t ubin = static_cast<uint32_t>(bin);
  for (int e = tid; e < nbuf; e += kThreads) {
    const uint32_t key = bkey[e], idx = bidx[e];
    if ((composite(key, idx) & cmask) >= cprefix) {
      const uint32_t cls = (!take_all && (key >> 20) == ubin) ? 0x80000000u : 0u;
      const int slot = atomicAdd(&sh.nsel, 1);
      if (slot < k) skeys[slot] = cls | idx;
    }
  }
  __syncthreads();
  bitonic_sort(skeys, np);  // ends with a barrier
  for (int i = tid; i < k; i += kThreads) out[i] = static_cast<int32_t>(skeys[i] & 0x7FFFFFFFu);
}

__global__ void __launch_bounds__(kThreads, 2)
topk_radix_kernel(const float* __restrict__ scores, int64_t stride, const int32_t* __restrict__ valid,
                  int32_t* __restrict__ indices, int k) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ Shared sh;
  const int t = blockIdx.x;
  int32_t* out = indices + static_cast<int64_t>(t) * k;
  const int n = valid[t];
  if (n <= k) {
    for (int i = threadIdx.x; i < k; i += kThreads) out[i] = i < n ? i : -1;
    return;
  }
  single_block_row(scores + static_cast<int64_t>(t) * stride, n, out, k, smem, sh);
}

// ------------------------------------------------------------------------------------------------
// Few rows: several blocks per row (grid nblk x rows, kChunk elements per block).
//   A. hist:   per-block 12-bit first-digit histogram, added to the row's global histogram.
//   B. filter: every block finds the threshold bin from the global histogram (select_bin, as pass 1
//              of the single-block algorithm) and writes the indices of its survivors (first digit
//              >= bin) in index order to its own segment of the scratch (kChunk entries: never
//              overflows) plus their count.
//   C. final:  one block per row concatenates the segments (index order) into the shared buffer
//              and finishes exactly like the single-block algorithm after a first pass that fits the
//              buffer; when it does not fit (more than kCap elements in the threshold bin and not all
//              needed) it runs the single-block algorithm on the row instead. Rows with valid <= kCap
//              also take the single-block algorithm (B does nothing for them). The output lists are
//              therefore bit-identical to the single-block kernel's.
constexpr int kMbThreads = 256;
constexpr int kMbPer = 16;
constexpr int kChunk = kMbThreads * kMbPer;  // 4096 elements per block
constexpr int kMultiMaxRows = 8;
constexpr int kFinalCap = kCap + kMaxK;  // survivors: < k above the bin, <= kCap in it (or all needed)
constexpr size_t kFinalSmemBytes = kMaxBins * sizeof(int) + kFinalCap * 2 * sizeof(uint32_t);
static_assert(kFinalSmemBytes >= kSmemBytes, "the final kernel runs single_block_row in its shared memory");

// Rows that take the multi-block path: valid > kCap (hence > k).
__device__ __forceinline__ bool multi_row(int n) { return n > kCap; }

__global__ void __launch_bounds__(kMbThreads)
topk_mb_hist_kernel(const float* __restrict__ scores, int64_t stride, const int32_t* __restrict__ valid,
                    int* __restrict__ ghist) {
  __shared__ int hist[kMaxBins];
  const int tid = threadIdx.x;
  const int t = blockIdx.y;
  const int n = valid[t];
  const int base = blockIdx.x * kChunk;
  if (!multi_row(n) || base >= n) return;  // block-uniform
  for (int i = tid; i < kMaxBins; i += kMbThreads) hist[i] = 0;
  __syncthreads();
  const float* row = scores + static_cast<int64_t>(t) * stride + base;
  const int end = min(n - base, kChunk);
  float x[kMbPer];
#pragma unroll
  for (int u = 0; u < kMbPer; ++u) {
    const int i = u * kMbThreads + tid;
    x[u] = i < end ? __ldg(row + i) : 0.0f;
  }
#pragma unroll
  for (int u = 0; u < kMbPer; ++u)
    if (u * kMbThreads + tid < end) atomicAdd(&hist[order_key(x[u]) >> 20], 1);
  __syncthreads();
  int* gh = ghist + static_cast<int64_t>(t) * kMaxBins;
  for (int i = tid; i < kMaxBins; i += kMbThreads)
    if (hist[i] != 0) atomicAdd(&gh[i], hist[i]);
}

__global__ void __launch_bounds__(kMbThreads)
topk_mb_filter_kernel(const float* __restrict__ scores, int64_t stride, const int32_t* __restrict__ valid, int k,
                      const int* __restrict__ ghist, int* __restrict__ counts, int32_t* __restrict__ seg, int nblk) {
  __shared__ int hist[kMaxBins];
  __shared__ Shared sh;
  const int tid = threadIdx.x;
  const int t = blockIdx.y;
  const int n = valid[t];
  const int base = blockIdx.x * kChunk;
  if (!multi_row(n) || base >= n) return;  // block-uniform
  const int* gh = ghist + static_cast<int64_t>(t) * kMaxBins;
  for (int i = tid; i < kMaxBins; i += kMbThreads) hist[i] = gh[i];
  __syncthreads();
  select_bin<kMbThreads>(hist, kMaxBins, k, sh);
  const uint32_t bin = static_cast<uint32_t>(sh.bin);
  const int krem = k - sh.above, cnt = sh.count;
  if (!(cnt <= kCap || cnt == krem)) return;  // the final kernel runs the single-block algorithm
  const float* row = scores + static_cast<int64_t>(t) * stride + base;
  const int end = min(n - base, kChunk);
  // kMbPer consecutive elements per thread: thread order is index order.
  uint32_t keep = 0;
#pragma unroll
  for (int u = 0; u < kMbPer; ++u) {
    const int i = kMbPer * tid + u;
    if (i < end && (order_key(__ldg(row + i)) >> 20) >= bin) keep |= 1u << u;
  }
  const int v = __popc(keep);
  int total;
  int o = block_inclusive_sum<kMbThreads>(v, sh, &total) - v;
  const int64_t slot = static_cast<int64_t>(t) * nblk + blockIdx.x;
  int32_t* sg = seg + slot * kChunk;
#pragma unroll
  for (int u = 0; u < kMbPer; ++u)
    if ((keep >> u) & 1u) sg[o++] = base + kMbPer * tid + u;
  if (tid == 0) counts[slot] = total;
}

__global__ void __launch_bounds__(kThreads, 1)
topk_mb_final_kernel(const float* __restrict__ scores, int64_t stride, const int32_t* __restrict__ valid,
                     int32_t* __restrict__ indices, int k, const int* __restrict__ ghist,
                     const int* __restrict__ counts, const int32_t* __restrict__ seg, int nblk) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ Shared sh;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int t = blockIdx.x;
  const float* row = scores + static_cast<int64_t>(t) * stride;
  int32_t* out = indices + static_cast<int64_t>(t) * k;
  const int n = valid[t];
  if (n <= k) {
    for (int i = tid; i < k; i += kThreads) out[i] = i < n ? i : -1;
    return;
  }
  if (!multi_row(n)) {
    single_block_row(row, n, out, k, smem, sh);
    return;
  }
  int* hist = reinterpret_cast<int*>(smem);                      // [kMaxBins]
  uint32_t* bkey = reinterpret_cast<uint32_t*>(hist + kMaxBins);  // [kFinalCap]
  uint32_t* bidx = bkey + kFinalCap;                              // [kFinalCap]
  const int* gh = ghist + static_cast<int64_t>(t) * kMaxBins;
  for (int i = tid; i < kMaxBins; i += kThreads) hist[i] = gh[i];
  __syncthreads();
  select_bin(hist, kMaxBins, k, sh);
  const int bin = sh.bin, above = sh.above, cnt = sh.count;
  const int krem = k - above;
  if (!(cnt <= kCap || cnt == krem)) {  // block-uniform: heavy ties in the threshold bin
    single_block_row(row, n, out, k, smem, sh);
    return;
  }
  // Concatenate the segments in block order (= index order). offs reuses hist (nb_used <= kMaxBins,
  // asserted on the host); select_bin finished reading hist before its closing barrier.
  const int nb_used = min((n + kChunk - 1) / kChunk, nblk);  // the min guards valid > stride only
  const int* cnts = counts + static_cast<int64_t>(t) * nblk;
  int* offs = hist;
  int run = 0;  // block-uniform
#pragma unroll 1
  for (int b0 = 0; b0 < nb_used; b0 += kThreads) {
    const int b = b0 + tid;
    const int c = b < nb_used ? cnts[b] : 0;
    int total;
    const int incl = block_inclusive_sum(c, sh, &total);
    if (b < nb_used) offs[b] = run + incl - c;
    run += total;
  }
  __syncthreads();
  const int nbuf = min(run, kFinalCap);  // run == above + cnt <= kFinalCap; min is a safety net
#pragma unroll 1
  for (int b = warp; b < nb_used; b += kWarps) {
    const int c = cnts[b], o = offs[b];
    const int32_t* sg = seg + (static_cast<int64_t>(t) * nblk + b) * kChunk;
    for (int e = lane; e < c; e += 32) {
      if (o + e < kFinalCap) {
        const int i = sg[e];
        bidx[o + e] = static_cast<uint32_t>(i);
        bkey[o + e] = order_key(__ldg(row + i));
      }
    }
  }
  __syncthreads();
  if (cnt == krem) {  // all survivors are selected: index order, as the single-block take_all
    for (int e = tid; e < nbuf; e += kThreads)
      if (e < k) out[e] = static_cast<int32_t>(bidx[e]);
    return;
  }
  unsigned long long cprefix = static_cast<unsigned long long>(bin) << 52;
  unsigned long long cmask = 0xFFFull << 52;
  refine_composites(bkey, bidx, nbuf, cprefix, cmask, 52, krem, cnt, hist, sh);
  // Output: first-digit > bin (exactly `above` of them) in index order, then the selected ones of
  // the threshold bin in index order; packed per-stripe counts (low 16 bits: above, high: bin).
  const uint32_t ubin = static_cast<uint32_t>(bin);
  int a_base = 0, b_base = above;  // block-uniform
#pragma unroll 1
  for (int base = 0; base < nbuf; base += kStripe) {
    int v = 0;
    uint32_t cls[kPer];  // 0: not output, 1: above, 2: selected in the bin
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int e = base + kPer * tid + u;
      cls[u] = 0;
      if (e < nbuf) {
        const uint32_t d = bkey[e] >> 20;
        if (d > ubin) cls[u] = 1;
        else if (d == ubin && (composite(bkey[e], bidx[e]) & cmask) >= cprefix) cls[u] = 2;
      }
      v += cls[u] == 1 ? 1 : (cls[u] == 2 ? (1 << 16) : 0);
    }
    int total;
    const int excl = block_inclusive_sum(v, sh, &total) - v;
    int oa = a_base + (excl & 0xFFFF), ob = b_base + (excl >> 16);
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int e = base + kPer * tid + u;
      if (cls[u] == 1) {
        if (oa < k) out[oa] = static_cast<int32_t>(bidx[e]);
        ++oa;
      } else if (cls[u] == 2) {
        if (ob < k) out[ob] = static_cast<int32_t>(bidx[e]);
        ++ob;
      }
    }
    a_base += total & 0xFFFF;
    b_base += total >> 16;
  }
}

struct MultiLayout {
  int nblk = 0;  // 0: the multi-block path does not apply
  size_t counts_off = 0, seg_off = 0, bytes = 0;
};

MultiLayout multi_layout(const TopkRadixParams& p) {
  MultiLayout L;
  if (p.tokens < 1 || p.tokens > kMultiMaxRows || p.scores_stride <= kCap) return L;
  const int64_t nblk = (p.scores_stride + kChunk - 1) / kChunk;
  if (nblk > kMaxBins) return L;  // offsets of the final kernel live in the kMaxBins histogram
  auto up16 = [](size_t x) { return (x + 15) & ~static_cast<size_t>(15); };
  const size_t rows = static_cast<size_t>(p.tokens);
  L.nblk = static_cast<int>(nblk);
  L.counts_off = up16(rows * kMaxBins * sizeof(int));
  L.seg_off = L.counts_off + up16(rows * static_cast<size_t>(nblk) * sizeof(int));
  L.bytes = L.seg_off + rows * static_cast<size_t>(nblk) * kChunk * sizeof(int32_t);
  return L;
}

}  // namespace

size_t topk_radix_scratch_bytes(const TopkRadixParams& p) { return multi_layout(p).bytes; }

void topk_radix(const TopkRadixParams& p, void* stream) {
  const char* what = "cuda topk_radix";
  if (p.tokens < 0) throw_runtime(what, "tokens must be >= 0 (got " + std::to_string(p.tokens) + ")");
  if (p.k < 1 || p.k > kMaxK)
    throw_runtime(what, "k must be in 1.." + std::to_string(kMaxK) + " (got " + std::to_string(p.k) + ")");
  if (p.tokens == 0) return;
  if (!p.scores || !p.valid || !p.indices) throw_runtime(what, "null pointer argument");
  if (p.scores_stride < 0) throw_runtime(what, "negative scores_stride");
  const MultiLayout L = multi_layout(p);
  if (p.scratch) {
    if (p.scratch_bytes < L.bytes)
      throw_runtime(what, "scratch of " + std::to_string(p.scratch_bytes) + " bytes, " + std::to_string(L.bytes) +
                              " needed (topk_radix_scratch_bytes)");
    if (reinterpret_cast<uintptr_t>(p.scratch) % 16 != 0) throw_runtime(what, "scratch must be 16-byte aligned");
  }
  static const bool attr_set = [] {
    IC_CUDA_CHECK(cudaFuncSetAttribute(topk_radix_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(kSmemBytes)));
    IC_CUDA_CHECK(cudaFuncSetAttribute(topk_mb_final_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(kFinalSmemBytes)));
    return true;
  }();
  (void)attr_set;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (!p.scratch || L.nblk == 0) {
    topk_radix_kernel<<<p.tokens, kThreads, kSmemBytes, s>>>(p.scores, p.scores_stride, p.valid, p.indices, p.k);
    IC_CUDA_CHECK_LAUNCH("topk_radix launch");
    return;
  }
  unsigned char* base = static_cast<unsigned char*>(p.scratch);
  int* ghist = reinterpret_cast<int*>(base);
  int* counts = reinterpret_cast<int*>(base + L.counts_off);
  int32_t* seg = reinterpret_cast<int32_t*>(base + L.seg_off);
  IC_CUDA_CHECK(cudaMemsetAsync(ghist, 0, static_cast<size_t>(p.tokens) * kMaxBins * sizeof(int), s));
  const dim3 grid(static_cast<unsigned>(L.nblk), static_cast<unsigned>(p.tokens));
  topk_mb_hist_kernel<<<grid, kMbThreads, 0, s>>>(p.scores, p.scores_stride, p.valid, ghist);
  IC_CUDA_CHECK_LAUNCH("topk_radix hist launch");
  topk_mb_filter_kernel<<<grid, kMbThreads, 0, s>>>(p.scores, p.scores_stride, p.valid, p.k, ghist, counts, seg,
                                                    L.nblk);
  IC_CUDA_CHECK_LAUNCH("topk_radix filter launch");
  topk_mb_final_kernel<<<p.tokens, kThreads, kFinalSmemBytes, s>>>(p.scores, p.scores_stride, p.valid, p.indices,
                                                                   p.k, ghist, counts, seg, L.nblk);
  IC_CUDA_CHECK_LAUNCH("topk_radix final launch");
}

}  // namespace indexcache::cuda
