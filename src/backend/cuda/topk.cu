// Row-wise top-k on the GPU: one block of 1024 threads per row, radix select on order-preserving
// uint32 keys, then a compaction and a bitonic sort of the k winners.
//
// Keys: order_key() is the CPU's (src/backend/cpu/topk.cpp): unsigned order == float order, NaN -> 0
// (below -inf). Three histogram passes over the row (digits of 11, 11 and 10 bits, most significant
// first, counting only keys that match the digits fixed so far) find the exact key T of the k-th
// largest element and `need`, how many elements equal to T belong to the top k (all elements > T
// do; there are k - need of them).
//
// Same SET and ORDER as the CPU, tie-breaking included: the CPU takes the k largest of the 64-bit
// composite (key << 32 | ~index), i.e. score descending, then index ascending. Here the compaction
// takes every element with key > T, and of those with key == T exactly the `need` lowest indices:
// the row is walked in index order, chunk by chunk, and an exclusive block scan of the "== T" flags
// gives each tied element its rank in index order. Those are precisely the k largest composites.
// The winners are then stored as the same composites and bitonic-sorted descending in shared
// memory, which reproduces the CPU's output order (composites are unique, so the order is total).
// Rows with fewer than k candidates get 0..n-1 then -1, as on the CPU.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/cuda_ops.h"

namespace indexcache::cuda {

namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxBins = 2048;
constexpr unsigned kFull = 0xFFFFFFFFu;

__device__ __forceinline__ uint32_t order_key(float f) {
  if (f != f) return 0;
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ unsigned long long composite(uint32_t key, int index) {
  return (static_cast<unsigned long long>(key) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(index));
}

// Inclusive sum of v over the block (all threads must call); *total gets the block sum.
__device__ int block_inclusive_sum(int v, int* warp_sums, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int n = __shfl_up_sync(kFull, v, o);
    if (lane >= o) v += n;
  }
  if (lane == 31) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    int s = lane < kWarps ? warp_sums[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int n = __shfl_up_sync(kFull, s, o);
      if (lane >= o) s += n;
    }
    warp_sums[lane] = s;
  }
  __syncthreads();
  const int res = v + (warp > 0 ? warp_sums[warp - 1] : 0);
  *total = warp_sums[kWarps - 1];
  __syncthreads();  // warp_sums may be reused by the next call
  return res;
}

__global__ void __launch_bounds__(kThreads)
topk_kernel(const float* __restrict__ scores, int64_t stride, const int32_t* __restrict__ valid,
            int32_t* __restrict__ indices, int k) {
  __shared__ int hist[kMaxBins];
  __shared__ unsigned long long cand[kMaxTopk];
  __shared__ int warp_sums[32];
  __shared__ int sh_bin, sh_above, sh_gt;

  const int tid = threadIdx.x, lane = tid & 31;
  const int t = blockIdx.x;
  const float* row = scores + t * stride;
  int32_t* out = indices + static_cast<int64_t>(t) * k;
  const int n = valid[t];
  if (n < k) {
    for (int i = tid; i < k; i += kThreads) out[i] = i < n ? i : -1;
    return;
  }

  // --- radix select: find T (prefix) and need (krem) ---
  uint32_t prefix = 0, mask = 0;
  int krem = k;  // how many of the elements matching `prefix` still belong to the top k
#pragma unroll 1
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = pass == 0 ? 21 : pass == 1 ? 10 : 0;  // digits of 11, 11, 10 bits
    const int nb = pass == 2 ? 1024 : 2048;
    for (int i = tid; i < nb; i += kThreads) hist[i] = 0;
    __syncthreads();
    for (int base = 0; base < n; base += kThreads) {  // uniform trip count: the whole warp matches
      const int i = base + tid;
      int bin = -1;
      if (i < n) {
        const uint32_t key = order_key(row[i]);
        if ((key & mask) == prefix) bin = static_cast<int>((key >> shift) & (nb - 1));
      }
      // Warp-aggregated increment: scores cluster in few top bins, so plain atomics would contend.
      const unsigned peers = __match_any_sync(kFull, bin);
      if (bin >= 0 && __ffs(peers) - 1 == lane) atomicAdd(&hist[bin], __popc(peers));
    }
    __syncthreads();
    // Thread tid owns `chunk` consecutive bins counted from the top (largest digit first).
    const int chunk = nb / kThreads;
    const int top = nb - 1 - tid * chunk;
    int c = 0;
    for (int j = 0; j < chunk; ++j) c += hist[top - j];
    int total;
    const int incl = block_inclusive_sum(c, warp_sums, &total);
    const int excl = incl - c;  // elements in strictly larger bins
    if (excl < krem && krem <= incl) {  // exactly one thread: the k-th largest lies in its bins
      int above = excl;
      for (int j = 0; j < chunk; ++j) {
        const int b = top - j;
        if (above + hist[b] >= krem) {
          sh_bin = b;
          sh_above = above;
          break;
        }
        above += hist[b];
      }
    }
    __syncthreads();
    prefix |= static_cast<uint32_t>(sh_bin) << shift;
    mask |= static_cast<uint32_t>(nb - 1) << shift;
    krem -= sh_above;
    __syncthreads();
  }
  const uint32_t thr = prefix;
  const int need = krem;  // elements == thr to take, lowest indices first
  const int n_gt = k - need;

  // --- compaction: all keys > thr (any slot order), then the `need` lowest-index keys == thr ---
  if (tid == 0) sh_gt = 0;
  __syncthreads();
  int tie_base = 0;  // ties seen in earlier chunks (uniform across the block)
  for (int base = 0; base < n; base += kThreads) {
    const int i = base + tid;
    const uint32_t key = i < n ? order_key(row[i]) : 0u;
    if (i < n && key > thr) cand[atomicAdd(&sh_gt, 1)] = composite(key, i);
    const int eq = (i < n && key == thr) ? 1 : 0;
    const int ties = __syncthreads_count(eq);
    if (ties > 0 && tie_base < need) {
      int total;
      const int rank = block_inclusive_sum(eq, warp_sums, &total) - eq;
      if (eq && tie_base + rank < need) cand[n_gt + tie_base + rank] = composite(key, i);
    }
    tie_base += ties;
  }
  // --- sort the k composites descending (bitonic over the next power of two, padded with 0) ---
  int P = 1;
  while (P < k) P <<= 1;
  for (int i = k + tid; i < P; i += kThreads) cand[i] = 0ull;
  __syncthreads();
  for (int size = 2; size <= P; size <<= 1) {
    for (int stride2 = size >> 1; stride2 > 0; stride2 >>= 1) {
      for (int i = tid; i < P; i += kThreads) {
        const int j = i ^ stride2;
        if (j > i) {
          const bool desc = (i & size) == 0;
          const unsigned long long a = cand[i], b = cand[j];
          if (desc ? a < b : a > b) {
            cand[i] = b;
            cand[j] = a;
          }
        }
      }
      __syncthreads();
    }
  }
  for (int i = tid; i < k; i += kThreads)
    out[i] = static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(cand[i] & 0xFFFFFFFFull));
}

}  // namespace

void topk(const TopkParams& p, void* stream) {
  if (p.tokens <= 0 || p.k <= 0) return;
  if (p.k > kMaxTopk)
    throw_runtime("cuda topk", "k must be <= " + std::to_string(kMaxTopk) + " (got " +
                                   std::to_string(p.k) + ")");
  topk_kernel<<<p.tokens, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p.scores, p.scores_stride, p.valid, p.indices, p.k);
  IC_CUDA_CHECK_LAUNCH("topk launch");
}

}  // namespace indexcache::cuda
