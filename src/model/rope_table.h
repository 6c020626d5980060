// RoPE cos/sin tables, computed in f32 exactly as transformers does (default and YaRN), with the
// YaRN attention factor folded into both.
#pragma once

#include <vector>

#include "indexcache/model_spec.h"

namespace indexcache {

struct RopeTable {
  int half = 0;            // rope_dim / 2 frequencies
  std::vector<float> cos;  // [positions, half]
  std::vector<float> sin;
};

// Inverse frequencies for `spec`'s rope over qk_rope_head_dim dims.
std::vector<float> rope_inv_freq(const ModelSpec& spec);
RopeTable make_rope_table(const ModelSpec& spec, int positions);

}  // namespace indexcache
