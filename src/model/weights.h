// Pointers to every weight of a DSA model as f32 (memory-mapped in place when the checkpoint is
// f32 and aligned, converted into owned buffers otherwise).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "indexcache/model_spec.h"
#include "indexcache/weight_store.h"
#include "io/checkpoint_schema.h"

namespace indexcache {

struct IndexerWeights {
  const float* wq_b = nullptr;          // [Hi*Di, q_lora_rank]
  const float* wk = nullptr;            // [Di, hidden]
  const float* k_norm_w = nullptr;      // [Di]
  const float* k_norm_b = nullptr;      // [Di]
  const float* weights_proj = nullptr;  // [Hi, hidden]
};

struct ExpertWeights {
  const float* gate = nullptr;  // [I, hidden]
  const float* up = nullptr;    // [I, hidden]
  const float* down = nullptr;  // [hidden, I]
};

struct LayerWeights {
  const float* input_norm = nullptr;      // [hidden]
  const float* post_attn_norm = nullptr;  // [hidden]
  const float* q_a = nullptr;             // [q_lora_rank, hidden]
  const float* q_a_bias = nullptr;
  const float* q_a_norm = nullptr;  // [q_lora_rank]
  const float* q_b = nullptr;       // [heads*qk_head_dim, q_lora_rank]
  const float* kv_a = nullptr;      // [kv_lora_rank+rope, hidden]
  const float* kv_a_bias = nullptr;
  const float* kv_a_norm = nullptr;  // [kv_lora_rank]
  const float* kv_b = nullptr;       // [heads*(nope+v), kv_lora_rank]
  // kv_b's key rows transposed per head, for the absorbed form: [heads, kv_lora_rank, nope].
  const float* uk_t = nullptr;
  const float* o = nullptr;          // [hidden, heads*v]
  const float* o_bias = nullptr;
  bool has_indexer = false;
  IndexerWeights indexer;
  bool moe = false;
  ExpertWeights dense;                 // dense MLP (intermediate_size)
  const float* router = nullptr;       // [E, hidden]
  const float* router_bias = nullptr;  // [E] e_score_correction_bias
  std::vector<ExpertWeights> experts;  // moe_intermediate_size each
  bool has_shared = false;
  ExpertWeights shared;  // moe_intermediate_size * n_shared_experts
};

struct ModelWeights {
  WeightStore store;                      // empty for random weights
  std::vector<std::vector<float>> owned;  // converted (or random) tensors and uk_t
  const float* embed = nullptr;           // [vocab, hidden]
  const float* final_norm = nullptr;      // [hidden]
  const float* lm_head = nullptr;         // [vocab, hidden] (the embedding when tied)
  std::vector<LayerWeights> layers;
};

// Loads every tensor of the checkpoint schema (io/checkpoint_schema.h) from `dir`, each layer's
// routed experts in the layout the checkpoint has. `require_indexer[l]` says whether layer l's
// indexer must be present; the indexers of other layers are loaded when present unless
// `only_required_indexers`.
std::unique_ptr<ModelWeights> load_weights(const std::string& dir, const ModelSpec& spec,
                                           const std::vector<bool>& require_indexer,
                                           bool only_required_indexers);

// Random weights for every tensor of the schema (every layer's indexer, packed experts) in owned
// f32 buffers, no file involved: each tensor drawn as its TensorInit says and rounded to bf16,
// from one mt19937_64 for the globals (seed * 1000003 + 17) and one per layer l
// (seed * 1000003 + 1000 + l), in schema order. Deterministic in `seed`.
std::unique_ptr<ModelWeights> synthetic_weights(const ModelSpec& spec, uint64_t seed);

// The host pointer schema tensor `t` was bound to (packed experts: that of expert 0), nullptr if
// the model lacks it.
const float* bound_tensor(const ModelWeights& w, const TensorSpec& t);

}  // namespace indexcache
