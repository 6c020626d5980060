// The CPU reference of the MLP and mixture-of-experts ops: group-limited sigmoid routing with a
// score-correction bias (transformers 5.17's glm_moe_dsa / deepseek_v3 router, exactly), the
// routed experts over their gathered tokens, the shared expert.
#pragma once

#include <cstdint>
#include <vector>

namespace indexcache::cpu {

struct Routing {
  int experts = 0, groups = 1, topk_group = 1, experts_per_token = 1;
  bool norm_topk_prob = true;
  float routed_scaling = 1.0f;
};

struct RoutingResult {
  std::vector<int32_t> experts;  // [T, experts_per_token]
  std::vector<float> weights;    // [T, experts_per_token]
};

// router_logits: [T, E] (x . W_router^T); bias [E].
RoutingResult route_tokens(const Routing& r, const float* router_logits, const float* bias, int tokens);

struct Mlp {
  const float* gate = nullptr;  // [I, hidden]
  const float* up = nullptr;    // [I, hidden]
  const float* down = nullptr;  // [hidden, I]
};

// y[T, hidden] = SwiGLU MLP of x (intermediate size `inter`).
void mlp(const Mlp& w, const float* x, int tokens, int hidden, int inter, float* y);

struct MoeArgs {
  const float* x = nullptr;  // [T, hidden]
  float* y = nullptr;        // [T, hidden], written
  int tokens = 0, hidden = 0, inter = 0;
  const float* router = nullptr;       // [E, hidden]
  const float* router_bias = nullptr;  // [E]
  std::vector<Mlp> experts;            // E, intermediate `inter` each
  bool has_shared = false;
  Mlp shared;
  int shared_inter = 0;
  Routing routing;
};
void moe(const MoeArgs& a);

}  // namespace indexcache::cpu
