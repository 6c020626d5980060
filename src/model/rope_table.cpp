#include "model/rope_table.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>

#include "indexcache/error.h"

namespace indexcache {

namespace {

double correction_dim(double rotations, int dim, double base, double max_pos) {
  return dim * std::log(max_pos / (rotations * 2 * std::numbers::pi)) / (2 * std::log(base));
}

}  // namespace

std::vector<float> rope_inv_freq(const ModelSpec& spec) {
  const int dim = spec.qk_rope_head_dim;
  const int half = dim / 2;
  const float base = static_cast<float>(spec.rope.theta);
  std::vector<float> pos_freq(half);
  for (int i = 0; i < half; ++i)
    pos_freq[i] = std::pow(base, static_cast<float>(2 * i) / static_cast<float>(dim));
  std::vector<float> inv(half);
  if (spec.rope.type != RopeType::kYarn) {
    for (int i = 0; i < half; ++i) inv[i] = 1.0f / pos_freq[i];
    return inv;
  }
  const RopeSpec& r = spec.rope;
  double low = correction_dim(r.beta_fast, dim, r.theta, r.original_max_position);
  double high = correction_dim(r.beta_slow, dim, r.theta, r.original_max_position);
  if (r.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  const float factor = static_cast<float>(r.factor);
  for (int i = 0; i < half; ++i) {
    const float ramp = std::clamp(static_cast<float>((i - low) / (high - low)), 0.0f, 1.0f);
    const float extrapolation = 1.0f - ramp;
    const float inv_extra = 1.0f / pos_freq[i];
    const float inv_inter = 1.0f / (factor * pos_freq[i]);
    // The blend as one fused multiply-add (what the -march=x86-64-v3 build contracted it to), so
    // the table is the same on every CPU whatever the compiler targets.
    inv[i] = std::fma(inv_inter, 1.0f - extrapolation, inv_extra * extrapolation);
  }
  // parse_model_spec refuses parameters that lead here; a spec built in code is checked too.
  for (int i = 0; i < half; ++i)
    if (!std::isfinite(inv[i]) || inv[i] < 0)
      throw_bad_input("rope parameters", "give a non-finite inverse frequency at pair " + std::to_string(i) +
                                             " (theta, factor, beta_fast, beta_slow)");
  return inv;
}

RopeTable make_rope_table(const ModelSpec& spec, int positions) {
  RopeTable t;
  const std::vector<float> inv = rope_inv_freq(spec);
  t.half = static_cast<int>(inv.size());
  const float scale = static_cast<float>(spec.rope_attention_factor());
  if (!std::isfinite(scale) || scale <= 0)
    throw_bad_input("rope parameters", "give a RoPE attention factor that is not finite and > 0 (mscale, "
                                       "mscale_all_dim, attention_factor)");
  t.cos.resize(static_cast<size_t>(positions) * t.half);
  t.sin.resize(t.cos.size());
  for (int p = 0; p < positions; ++p) {
    for (int i = 0; i < t.half; ++i) {
      const float angle = static_cast<float>(p) * inv[i];  // f32 product, as torch
      t.cos[static_cast<size_t>(p) * t.half + i] = static_cast<float>(std::cos(static_cast<double>(angle))) * scale;
      t.sin[static_cast<size_t>(p) * t.half + i] = static_cast<float>(std::sin(static_cast<double>(angle))) * scale;
    }
  }
  return t;
}

}  // namespace indexcache
