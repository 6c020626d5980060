// Row-wise top-k by selection on order-preserving integer keys: O(n) per row, a total order even
// with NaN (NaN ranks below -inf) and deterministic tie-breaking (lower index first).
#include <algorithm>
#include <cstring>
#include <vector>

#include "backend/cpu/kernels.h"

namespace indexcache::cpu {

namespace {

// Maps a float to a uint32 whose unsigned order matches the float order; NaN maps to 0.
inline uint32_t order_key(float f) {
  if (f != f) return 0;
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

}  // namespace

void topk(const TopkParams& p) {
#pragma omp parallel
  {
    std::vector<uint64_t> keyed;
#pragma omp for schedule(dynamic, 4)
    for (int t = 0; t < p.tokens; ++t) {
      int32_t* out = p.indices + static_cast<int64_t>(t) * p.k;
      const int n = p.valid[t];
      const float* row = p.scores + t * p.scores_stride;
      if (n < p.k) {
        for (int i = 0; i < p.k; ++i) out[i] = i < n ? i : -1;
        continue;
      }
      // Key: score order in the high 32 bits, inverted index in the low bits, so a larger key is
      // a higher score, ties broken towards the lower index.
      keyed.resize(n);
      for (int i = 0; i < n; ++i)
        keyed[i] = (static_cast<uint64_t>(order_key(row[i])) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(i));
      std::nth_element(keyed.begin(), keyed.begin() + (p.k - 1), keyed.end(), std::greater<>());
      std::sort(keyed.begin(), keyed.begin() + p.k, std::greater<>());
      for (int i = 0; i < p.k; ++i) out[i] = static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(keyed[i]));
    }
  }
}

}  // namespace indexcache::cpu
