#include "backend/cpu/kernels.h"
#include "backend/cpu/simd_dispatch.h"

namespace indexcache::cpu {

INDEXCACHE_CPU_KERNEL void rope(const RopeParams& p) {
  const int half = p.rope_dim / 2;
  const bool interleaved = p.layout == RopeLayout::kInterleaved;
#pragma omp parallel for schedule(static) if (p.tokens > 16)
  for (int t = 0; t < p.tokens; ++t) {
    const float* c = p.cos + static_cast<int64_t>(p.positions[t]) * half;
    const float* s = p.sin + static_cast<int64_t>(p.positions[t]) * half;
    for (int h = 0; h < p.heads; ++h) {
      float* x = p.x + t * p.token_stride + h * p.head_stride + p.offset;
      for (int i = 0; i < half; ++i) {
        // Pair i: (x[2i], x[2i+1]) interleaved, or (x[i], x[i+half]) half-split; frequency i.
        float* a = interleaved ? x + 2 * i : x + i;
        float* b = interleaved ? x + 2 * i + 1 : x + i + half;
        const float x0 = *a, x1 = *b;
        *a = x0 * c[i] - x1 * s[i];
        *b = x1 * c[i] + x0 * s[i];
      }
    }
  }
}

}  // namespace indexcache::cpu
