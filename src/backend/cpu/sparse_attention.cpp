// Sparse attention on the CPU: each (query, head) attends only to its selected tokens; the work is
// O(selected) per query, never a dense pass with a mask.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cpu/kernels.h"

namespace indexcache::cpu {

void sparse_attention(const SparseAttentionParams& p) {
  const int group = p.heads / p.kv_heads;
#pragma omp parallel
  {
    std::vector<float> logits(p.num_selected);
    std::vector<float> acc(p.head_dim_v);
#pragma omp for schedule(dynamic, 4) collapse(2)
    for (int t = 0; t < p.tokens; ++t) {
      for (int h = 0; h < p.heads; ++h) {
        const int32_t* sel = p.indices + static_cast<int64_t>(t) * p.num_selected;
        const float* q = p.q + t * p.q_token_stride + h * p.q_head_stride;
        const int kvh = h / group;
        float mx = -std::numeric_limits<float>::infinity();
        for (int i = 0; i < p.num_selected; ++i) {
          if (sel[i] < 0) continue;
          const float* k = p.k + sel[i] * p.k_token_stride + kvh * p.k_head_stride;
          float dot = 0;
#pragma omp simd reduction(+ : dot)
          for (int d = 0; d < p.head_dim_k; ++d) dot += q[d] * k[d];
          logits[i] = dot * p.scale;
          mx = std::max(mx, logits[i]);
        }
        std::fill(acc.begin(), acc.end(), 0.0f);
        float denom = 0;
        for (int i = 0; i < p.num_selected; ++i) {
          if (sel[i] < 0) continue;
          const float e = std::exp(logits[i] - mx);
          denom += e;
          const float* v = p.v + sel[i] * p.v_token_stride + kvh * p.v_head_stride;
          float* a = acc.data();
#pragma omp simd
          for (int d = 0; d < p.head_dim_v; ++d) a[d] += e * v[d];
        }
        float* out = p.out + t * p.out_token_stride + h * p.out_head_stride;
        const float inv = denom > 0 ? 1.0f / denom : 0.0f;
        for (int d = 0; d < p.head_dim_v; ++d) out[d] = acc[d] * inv;
      }
    }
  }
}

}  // namespace indexcache::cpu
