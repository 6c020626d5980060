#include "indexcache/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "indexcache/error.h"

namespace indexcache {

Sampler::Sampler(const SamplerConfig& config) : config_(config), rng_(config.seed) {
  if (!(config.temperature >= 0) || !std::isfinite(config.temperature))
    throw_bad_input("--temp", "must be a finite number >= 0");
  if (config.top_k < 0) throw_bad_input("--top-k", "must be >= 0");
  if (!(config.top_p > 0 && config.top_p <= 1)) throw_bad_input("--top-p", "must be in (0, 1]");
}

int32_t Sampler::sample(std::span<const float> logits) {
  const int V = static_cast<int>(logits.size());
  int best = -1;
  for (int i = 0; i < V; ++i)
    if (!std::isnan(logits[i]) && (best < 0 || logits[i] > logits[best])) best = i;
  if (best < 0) throw_runtime("sampler", "every logit is NaN");
  if (config_.temperature == 0 || config_.top_k == 1) return best;

  // Candidates sorted by logit, cut by top-k, softmax at the temperature, cut by top-p.
  std::vector<int> order;
  order.reserve(V);
  for (int i = 0; i < V; ++i)
    if (!std::isnan(logits[i])) order.push_back(i);
  const int keep = config_.top_k > 0 ? std::min<int>(config_.top_k, order.size()) : static_cast<int>(order.size());
  std::partial_sort(order.begin(), order.begin() + keep, order.end(),
                    [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  order.resize(keep);
  std::vector<double> p(keep);
  const double mx = logits[order[0]];
  double sum = 0;
  for (int i = 0; i < keep; ++i) sum += p[i] = std::exp((logits[order[i]] - mx) / config_.temperature);
  double mass = 0;
  int n = 0;
  while (n < keep) {
    mass += p[n] / sum;
    ++n;
    if (mass >= config_.top_p) break;
  }
  std::discrete_distribution<int> pick(p.begin(), p.begin() + n);
  return order[pick(rng_)];
}

}  // namespace indexcache
