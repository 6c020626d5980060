// Next-token sampling: greedy, temperature, top-k, top-p (nucleus), seeded.
#pragma once

#include <cstdint>
#include <random>
#include <span>

namespace indexcache {

struct SamplerConfig {
  float temperature = 0.0f;  // 0: greedy (argmax)
  int top_k = 0;             // 0: no limit
  float top_p = 1.0f;        // 1: no limit
  uint64_t seed = 0;
};

class Sampler {
 public:
  // Throws Error(kBadInput) for a negative temperature or top_k, or top_p outside (0, 1].
  explicit Sampler(const SamplerConfig& config);
  // Picks a token from `logits` [vocab]. NaN logits are never chosen; all-NaN is a runtime error.
  int32_t sample(std::span<const float> logits);

 private:
  SamplerConfig config_;
  std::mt19937_64 rng_;
};

}  // namespace indexcache
