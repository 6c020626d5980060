#include "backend/cpu/moe.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "backend/cpu/kernels.h"
#include "backend/cpu/simd_dispatch.h"

namespace indexcache::cpu {

INDEXCACHE_CPU_KERNEL RoutingResult route_tokens(const Routing& s, const float* logits,
                                                 const float* bias, int tokens) {
  const int E = s.experts, G = s.groups, per_group = E / G, K = s.experts_per_token;
  RoutingResult r;
  r.experts.resize(static_cast<size_t>(tokens) * K);
  r.weights.resize(r.experts.size());
  const float neg_inf = -std::numeric_limits<float>::infinity();
#pragma omp parallel for schedule(static) if (tokens > 64)
  for (int t = 0; t < tokens; ++t) {
    std::vector<float> score(E), choice(E), group_score(G);
    for (int e = 0; e < E; ++e) {
      score[e] = 1.0f / (1.0f + std::exp(-logits[static_cast<size_t>(t) * E + e]));
      choice[e] = score[e] + bias[e];
    }
    // Group score: sum of the two best choices in the group; keep the topk_group best groups.
    for (int g = 0; g < G; ++g) {
      float a = neg_inf, b = neg_inf;
      for (int e = g * per_group; e < (g + 1) * per_group; ++e) {
        if (choice[e] > a) {
          b = a;
          a = choice[e];
        } else if (choice[e] > b) {
          b = choice[e];
        }
      }
      group_score[g] = a + b;
    }
    std::vector<int> groups(G);
    std::iota(groups.begin(), groups.end(), 0);
    std::stable_sort(groups.begin(), groups.end(),
                     [&](int x, int y) { return group_score[x] > group_score[y]; });
    std::vector<char> allowed(G, 0);
    for (int i = 0; i < s.topk_group; ++i) allowed[groups[i]] = 1;
    std::vector<int> order;
    for (int e = 0; e < E; ++e)
      if (allowed[e / per_group]) order.push_back(e);
    std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return choice[x] > choice[y]; });
    float sum = 0;
    for (int i = 0; i < K; ++i) sum += score[order[i]];
    for (int i = 0; i < K; ++i) {
      float w = score[order[i]];
      if (s.norm_topk_prob) w /= (sum + 1e-20f);
      r.experts[static_cast<size_t>(t) * K + i] = order[i];
      r.weights[static_cast<size_t>(t) * K + i] = w * s.routed_scaling;
    }
  }
  return r;
}

INDEXCACHE_CPU_KERNEL void mlp(const Mlp& w, const float* x, int tokens, int hidden, int inter,
                               float* y) {
  std::vector<float> gate(static_cast<size_t>(tokens) * inter), up(gate.size());
  linear({.x = x, .x_stride = hidden, .w = w.gate, .y = gate.data(), .y_stride = inter, .tokens = tokens,
          .in = hidden, .out = inter});
  linear({.x = x, .x_stride = hidden, .w = w.up, .y = up.data(), .y_stride = inter, .tokens = tokens, .in = hidden,
          .out = inter});
  silu_mul(gate.data(), up.data(), gate.data(), static_cast<int64_t>(gate.size()));
  linear({.x = gate.data(), .x_stride = inter, .w = w.down, .y = y, .y_stride = hidden, .tokens = tokens,
          .in = inter, .out = hidden});
}

INDEXCACHE_CPU_KERNEL void moe(const MoeArgs& a) {
  const int H = a.hidden, E = a.routing.experts, K = a.routing.experts_per_token, I = a.inter;
  const int tokens = a.tokens;
  float* y = a.y;
  std::vector<float> logits(static_cast<size_t>(tokens) * E);
  linear({.x = a.x, .x_stride = H, .w = a.router, .y = logits.data(), .y_stride = E, .tokens = tokens, .in = H,
          .out = E});
  const RoutingResult r = route_tokens(a.routing, logits.data(), a.router_bias, tokens);

  // Tokens per expert, then one batched MLP per expert over its gathered tokens.
  std::vector<std::vector<std::pair<int, float>>> assigned(E);
  for (int t = 0; t < tokens; ++t)
    for (int i = 0; i < K; ++i)
      assigned[r.experts[static_cast<size_t>(t) * K + i]].emplace_back(t, r.weights[static_cast<size_t>(t) * K + i]);

  std::fill(y, y + static_cast<size_t>(tokens) * H, 0.0f);
  std::vector<float> xe, ye;
  for (int e = 0; e < E; ++e) {
    const auto& list = assigned[e];
    if (list.empty()) continue;
    const int n = static_cast<int>(list.size());
    xe.resize(static_cast<size_t>(n) * H);
    ye.resize(xe.size());
    for (int j = 0; j < n; ++j)
      std::copy_n(a.x + static_cast<size_t>(list[j].first) * H, H, xe.data() + static_cast<size_t>(j) * H);
    mlp(a.experts[e], xe.data(), n, H, I, ye.data());
    for (int j = 0; j < n; ++j) {
      float* dst = y + static_cast<size_t>(list[j].first) * H;
      const float* src = ye.data() + static_cast<size_t>(j) * H;
      const float wgt = list[j].second;
      for (int d = 0; d < H; ++d) dst[d] += wgt * src[d];
    }
  }
  if (a.has_shared) {
    std::vector<float> sh(static_cast<size_t>(tokens) * H);
    mlp(a.shared, a.x, tokens, H, a.shared_inter, sh.data());
    for (size_t i = 0; i < sh.size(); ++i) y[i] += sh[i];
  }
}

}  // namespace indexcache::cpu
