#include <cblas.h>

#include <cmath>

#include "backend/cpu/kernels.h"
#include "backend/cpu/simd_dispatch.h"

namespace indexcache::cpu {

INDEXCACHE_CPU_KERNEL void linear(const LinearParams& p) {
  if (p.tokens == 0 || p.out == 0) return;
  if (p.in == 0) {
    for (int t = 0; t < p.tokens; ++t)
      for (int o = 0; o < p.out; ++o) p.y[t * p.y_stride + o] = p.bias ? p.bias[o] : 0.0f;
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, p.tokens, p.out, p.in, 1.0f, p.x,
              static_cast<int>(p.x_stride), p.w, p.in, 0.0f, p.y, static_cast<int>(p.y_stride));
  if (p.bias) {
    for (int t = 0; t < p.tokens; ++t)
      for (int o = 0; o < p.out; ++o) p.y[t * p.y_stride + o] += p.bias[o];
  }
}

INDEXCACHE_CPU_KERNEL void silu_mul(const float* gate, const float* up, float* y, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    float g = gate[i];
    y[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace indexcache::cpu
