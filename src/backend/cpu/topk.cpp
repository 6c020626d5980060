// Row-wise top-k by radix selection on order-preserving integer keys: O(n + k) per row, a total
// order even with NaN (NaN ranks below -inf) and deterministic tie-breaking (lower index first).
//
// Per row with valid >= k:
//   1. a histogram of the keys' top kTopBits bits finds the bucket that holds the k-th largest key;
//   2. a branch-free pass collects the indices at or above that bucket; those few are split into
//      the elements of higher buckets (selected) and the bucket's members (candidates), both in
//      index order;
//   3. histograms of the next 8-bit digits of the candidates narrow the bucket until the rest fit or
//      the keys are fully resolved; candidates with equal keys stay in index order, so taking the
//      first ones breaks ties towards the lower index;
//   4. the k selected are sorted by (key desc, index asc): std::sort for small k, else a stable LSD
//      radix sort on the key (equal keys were selected in index order and stay that way).
// The selection is a set defined by the total order on (key, -index) and its sorted order is unique,
// so the output is the same as a full sort's.
#include <algorithm>
#include <cstring>
#include <functional>
#include <vector>

#include "backend/cpu/kernels.h"
#include "backend/cpu/simd_dispatch.h"

namespace indexcache::cpu {

namespace {

constexpr int kTopBits = 11;                // first digit: sign, exponent, 2 mantissa bits
constexpr int kTopBins = 1 << kTopBits;
constexpr int kDigitBits = 8;               // later digits (candidates and the final sort)
constexpr int kDigitBins = 1 << kDigitBits;
constexpr int kRadixSortMin = 64;           // k below this: std::sort of the selection

// Maps a float to a uint32 whose unsigned order matches the float order; NaN maps to 0. Written
// without branches (random signs would mispredict) so that a loop of it vectorizes.
inline uint32_t order_key(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t flip = static_cast<uint32_t>(static_cast<int32_t>(u) >> 31) | 0x80000000u;
  return f == f ? (u ^ flip) : 0u;
}

// Entry: key in the high 32 bits, inverted index in the low bits, so a larger entry is a higher
// score, ties broken towards the lower index. Entries of one row are distinct.
inline uint64_t make_entry(uint32_t key, int i) {
  return (static_cast<uint64_t>(key) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(i));
}
inline uint32_t entry_key(uint64_t e) { return static_cast<uint32_t>(e >> 32); }
inline int32_t entry_index(uint64_t e) { return static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(e)); }

// The bucket where the count from the top bucket down first reaches `need` (1 <= need <= total);
// *above gets the count in the buckets above it.
inline uint32_t threshold_bucket(const uint32_t* hist, int bins, int need, int* above) {
  uint32_t cum = 0;
  for (int b = bins - 1;; --b) {
    if (cum + hist[b] >= static_cast<uint32_t>(need)) {
      *above = static_cast<int>(cum);
      return static_cast<uint32_t>(b);
    }
    cum += hist[b];
  }
}

struct Scratch {
  std::vector<uint32_t> hist = std::vector<uint32_t>(kTopBins);
  std::vector<uint32_t> keys, hits;
  std::vector<uint64_t> selected, sorted, cand;
};

// Sorts a[0..k) by entry descending; equal keys must come in index order. Returns where the sorted
// entries are (a or tmp). Always inlined, like select_row.
[[gnu::always_inline]] inline const uint64_t* sort_descending(uint64_t* a, uint64_t* tmp, int k) {
  if (k < kRadixSortMin) {
    std::sort(a, a + k, std::greater<>());
    return a;
  }
  constexpr int kPasses = 32 / kDigitBits;
  uint32_t count[kPasses][kDigitBins] = {};
  for (int j = 0; j < k; ++j) {
    const uint32_t key = entry_key(a[j]);
    for (int p = 0; p < kPasses; ++p) ++count[p][(key >> (p * kDigitBits)) & (kDigitBins - 1)];
  }
  uint64_t* src = a;
  uint64_t* dst = tmp;
  for (int p = 0; p < kPasses; ++p) {
    const int shift = p * kDigitBits;
    uint32_t* c = count[p];
    if (c[(entry_key(src[0]) >> shift) & (kDigitBins - 1)] == static_cast<uint32_t>(k)) continue;
    uint32_t offset = 0;  // descending: the highest digit first
    for (int d = kDigitBins - 1; d >= 0; --d) {
      const uint32_t n = c[d];
      c[d] = offset;
      offset += n;
    }
    for (int j = 0; j < k; ++j) {
      const uint64_t e = src[j];
      dst[c[(entry_key(e) >> shift) & (kDigitBins - 1)]++] = e;
    }
    std::swap(src, dst);
  }
  return src;
}

// Top-k of one row with n >= k >= 1. Always inlined, so that it is compiled into each clone of
// topk (simd_dispatch.h).
[[gnu::always_inline]] inline void select_row(const float* row, int n, int k, Scratch& s,
                                              int32_t* out) {
  if (s.cand.size() < static_cast<size_t>(n) + 1) {
    s.cand.resize(static_cast<size_t>(n) + 1);
    s.keys.resize(static_cast<size_t>(n) + 1);
    s.hits.resize(static_cast<size_t>(n) + 1);
  }
  if (s.selected.size() < static_cast<size_t>(k) + 1) {
    s.selected.resize(static_cast<size_t>(k) + 1);
    s.sorted.resize(static_cast<size_t>(k) + 1);
  }
  uint32_t* hist = s.hist.data();
  uint64_t* sel = s.selected.data();
  uint64_t* cand = s.cand.data();

  constexpr int kTopShift = 32 - kTopBits;
  uint32_t* keys = s.keys.data();
  for (int i = 0; i < n; ++i) keys[i] = order_key(row[i]);
  std::fill_n(hist, kTopBins, 0u);
  for (int i = 0; i < n; ++i) ++hist[keys[i] >> kTopShift];
  int above = 0;
  const uint32_t top = threshold_bucket(hist, kTopBins, k, &above);

  // Branch-free collection (the outcome is data-dependent): every slot is written, the count
  // advances only when the element belongs. First the indices of the keys in or above the
  // threshold bucket, then those few split into selected (above) and candidates (in it). ns stays
  // below k and nc at most the bucket's count, so the spare slot at the end of each buffer suffices.
  uint32_t* hits = s.hits.data();
  const uint32_t cutoff = top << kTopShift;
  int nh = 0;
  for (int i = 0; i < n; ++i) {
    hits[nh] = static_cast<uint32_t>(i);
    nh += keys[i] >= cutoff;
  }
  int ns = 0, nc = 0;
  for (int j = 0; j < nh; ++j) {
    const int i = static_cast<int>(hits[j]);
    const uint32_t key = keys[i];
    const uint64_t e = make_entry(key, i);
    sel[ns] = e;
    ns += (key >> kTopShift) > top;
    cand[nc] = e;
    nc += (key >> kTopShift) == top;
  }

  int need = k - above;
  int shift = kTopShift;  // key bits below the digits resolved so far
  while (nc > need && shift > 0) {
    const int bits = std::min(shift, kDigitBits);
    shift -= bits;
    const uint32_t mask = (1u << bits) - 1;
    uint32_t h[kDigitBins] = {};
    for (int j = 0; j < nc; ++j) ++h[(entry_key(cand[j]) >> shift) & mask];
    int up = 0;
    const uint32_t d = threshold_bucket(h, 1 << bits, need, &up);
    int m = 0;  // compacts in place, keeping index order
    for (int j = 0; j < nc; ++j) {
      const uint64_t e = cand[j];
      const uint32_t dj = (entry_key(e) >> shift) & mask;
      sel[ns] = e;
      ns += dj > d;
      cand[m] = e;
      m += dj == d;
    }
    nc = m;
    need -= up;
  }
  // Either every candidate is taken or their keys are all equal: the lower indices go first.
  std::copy_n(cand, need, sel + ns);

  const uint64_t* sorted = sort_descending(sel, s.sorted.data(), k);
  for (int i = 0; i < k; ++i) out[i] = entry_index(sorted[i]);
}

}  // namespace

INDEXCACHE_CPU_KERNEL void topk(const TopkParams& p) {
  if (p.k <= 0) return;
#pragma omp parallel
  {
    Scratch scratch;
#pragma omp for schedule(dynamic, 4)
    for (int t = 0; t < p.tokens; ++t) {
      int32_t* out = p.indices + static_cast<int64_t>(t) * p.k;
      const int n = p.valid[t];
      const float* row = p.scores + t * p.scores_stride;
      if (n < p.k) {
        for (int i = 0; i < p.k; ++i) out[i] = i < n ? i : -1;
        continue;
      }
      select_row(row, n, p.k, scratch, out);
    }
  }
}

}  // namespace indexcache::cpu
