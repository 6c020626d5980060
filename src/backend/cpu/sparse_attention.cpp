// Sparse attention on the CPU: each query attends only to its selected tokens; the work is
// O(selected) per query, never a dense pass with a mask. All heads that share a kv head (all of
// them in the absorbed MQA form) are processed together, so each selected row is read once for
// the scores and once for the values, whatever the number of heads; the dot products of up to
// kHeadBlock heads run as independent vector accumulators.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cpu/kernels.h"
#include "backend/cpu/simd_dispatch.h"

namespace indexcache::cpu {

namespace {

typedef float v8f __attribute__((vector_size(32)));
constexpr int kLanes = 8;
constexpr int kHeadBlock = 4;

inline v8f load8(const float* p) {
  v8f v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

inline float hsum(v8f v) {
  float s = 0;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

// out[i] = q_i . k for the `n` (<= kHeadBlock) query vectors q_i = q + i * q_stride.
inline void dots(const float* q, int64_t q_stride, int n, const float* k, int dim, float* out) {
  v8f acc[kHeadBlock] = {};
  int d = 0;
  for (; d + kLanes <= dim; d += kLanes) {
    const v8f kv = load8(k + d);
    for (int i = 0; i < n; ++i) acc[i] += load8(q + i * q_stride + d) * kv;
  }
  for (int i = 0; i < n; ++i) {
    float s = hsum(acc[i]);
    for (int e = d; e < dim; ++e) s += q[i * q_stride + e] * k[e];
    out[i] = s;
  }
}

}  // namespace

INDEXCACHE_CPU_KERNEL void sparse_attention(const SparseAttentionParams& p) {
  const int group = p.heads / p.kv_heads;
  const int K = p.num_selected;
#pragma omp parallel
  {
    std::vector<int32_t> rows(K);
    std::vector<float> probs(static_cast<size_t>(group) * K);  // [head in group][row]
    std::vector<float> acc(static_cast<size_t>(group) * p.head_dim_v);
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int t = 0; t < p.tokens; ++t) {
      for (int g = 0; g < p.kv_heads; ++g) {
        const int32_t* sel = p.indices + static_cast<int64_t>(t) * K;
        int m = 0;
        for (int i = 0; i < K; ++i)
          if (sel[i] >= 0) rows[m++] = sel[i];
        const int h0 = g * group;
        const float* q0 = p.q + t * p.q_token_stride + h0 * p.q_head_stride;
        // Scores: each selected key row once for all heads of the group.
        float buf[kHeadBlock];
        for (int j = 0; j < m; ++j) {
          const float* k = p.k + rows[j] * p.k_token_stride + g * p.k_head_stride;
          for (int h = 0; h < group; h += kHeadBlock) {
            const int n = std::min(kHeadBlock, group - h);
            dots(q0 + h * p.q_head_stride, p.q_head_stride, n, k, p.head_dim_k, buf);
            for (int i = 0; i < n; ++i) probs[static_cast<size_t>(h + i) * K + j] = buf[i] * p.scale;
          }
        }
        // Softmax per head.
        for (int h = 0; h < group; ++h) {
          float* ph = probs.data() + static_cast<size_t>(h) * K;
          float mx = -std::numeric_limits<float>::infinity();
          for (int j = 0; j < m; ++j) mx = std::max(mx, ph[j]);
          float sum = 0;
          for (int j = 0; j < m; ++j) sum += ph[j] = std::exp(ph[j] - mx);
          const float inv = sum > 0 ? 1.0f / sum : 0.0f;
          for (int j = 0; j < m; ++j) ph[j] *= inv;
        }
        // Values: each selected value row once for all heads of the group.
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int j = 0; j < m; ++j) {
          const float* v = p.v + rows[j] * p.v_token_stride + g * p.v_head_stride;
          for (int h = 0; h < group; ++h) {
            const float w = probs[static_cast<size_t>(h) * K + j];
            float* a = acc.data() + static_cast<size_t>(h) * p.head_dim_v;
#pragma omp simd
            for (int d = 0; d < p.head_dim_v; ++d) a[d] += w * v[d];
          }
        }
        for (int h = 0; h < group; ++h) {
          float* out = p.out + t * p.out_token_stride + (h0 + h) * p.out_head_stride;
          std::copy_n(acc.data() + static_cast<size_t>(h) * p.head_dim_v, p.head_dim_v, out);
        }
      }
    }
  }
}

}  // namespace indexcache::cpu
