// Mixture-of-experts block: group-limited sigmoid routing with a score-correction bias, routed
// experts, shared experts.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "indexcache/model_spec.h"
#include "model/weights.h"

namespace indexcache {

struct RoutingResult {
  std::vector<int32_t> experts;  // [T, num_experts_per_tok]
  std::vector<float> weights;    // [T, num_experts_per_tok]
};

// router_logits: [T, E] (x . W_router^T). Implements the transformers 5.17 router exactly.
RoutingResult route_tokens(const ModelSpec& spec, const float* router_logits, const float* bias,
                           int tokens);

// y[T, hidden] = SwiGLU MLP of x with `w` (intermediate size `inter`).
void mlp_forward(Backend& be, const ExpertWeights& w, const float* x, int tokens, int hidden,
                 int inter, float* y);

// y[T, hidden] = MoE(x) for a MoE layer.
void moe_forward(Backend& be, const ModelSpec& spec, const LayerWeights& lw, const float* x,
                 int tokens, float* y);

}  // namespace indexcache
