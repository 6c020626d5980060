#include <cmath>

#include "backend/cpu/kernels.h"
#include "backend/cpu/simd_dispatch.h"

namespace indexcache::cpu {

INDEXCACHE_CPU_KERNEL void norm(const NormParams& p) {
#pragma omp parallel for schedule(static) if (p.tokens > 16)
  for (int t = 0; t < p.tokens; ++t) {
    const float* x = p.x + t * p.x_stride;
    float* y = p.y + t * p.y_stride;
    const int d = p.dim;
    if (p.layer_norm) {
      double mean = 0;
      for (int i = 0; i < d; ++i) mean += x[i];
      mean /= d;
      double var = 0;
      for (int i = 0; i < d; ++i) var += (x[i] - mean) * (x[i] - mean);
      var /= d;
      const float inv = static_cast<float>(1.0 / std::sqrt(var + p.eps));
      const float m = static_cast<float>(mean);
      for (int i = 0; i < d; ++i) y[i] = (x[i] - m) * inv * p.w[i] + (p.bias ? p.bias[i] : 0.0f);
    } else {
      double ss = 0;
      for (int i = 0; i < d; ++i) ss += static_cast<double>(x[i]) * x[i];
      const float inv = static_cast<float>(1.0 / std::sqrt(ss / d + p.eps));
      for (int i = 0; i < d; ++i) y[i] = x[i] * inv * p.w[i];
    }
  }
}

}  // namespace indexcache::cpu
