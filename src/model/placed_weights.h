// Every weight of a model as views in a backend's memory (backend.place() of the host tensors of
// ModelWeights): what the Session's forward pass reads.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "backend/backend.h"
#include "model/weights.h"

namespace indexcache {

struct PlacedLayer {
  TensorView input_norm, post_attn_norm;
  TensorView q_a, q_a_bias, q_a_norm, q_b;  // biases empty unless attention_bias
  TensorView kv_a, kv_a_bias, kv_a_norm;
  TensorView uk;  // [heads, kv_lora_rank, nope]: kv_b's key rows of each head, transposed
  TensorView uv;  // [heads, v_head_dim, kv_lora_rank]: kv_b's value rows of each head
  TensorView o, o_bias;
  bool has_indexer = false;
  TensorView wq_b, wk, k_norm_w, k_norm_b, weights_proj;
  bool moe = false;
  MlpWeightsView dense;
  TensorView router, router_bias;  // router_bias f32
  std::vector<MlpWeightsView> experts;
  bool has_shared = false;
  MlpWeightsView shared;
};

struct PlacedWeights {
  TensorView embed, final_norm, lm_head;
  std::vector<PlacedLayer> layers;
};

// on_bytes(done, total): after each weight placed, the host bytes of the weights placed so far and
// of all of them (placing a big checkpoint on a GPU takes a while).
PlacedWeights place_weights(Backend& be, const ModelSpec& spec, const ModelWeights& w,
                            const std::function<void(int64_t, int64_t)>& on_bytes = {});

}  // namespace indexcache
