// Every weight of a DSA model as it lies in host memory: memory-mapped in place in the
// checkpoint's own dtype (f32, bf16 or f16; an unaligned tensor is copied to f32), or owned (random
// bf16 weights, the derived uk_t in kv_b's dtype). Backends convert when they place them
// (Backend::place), so a bf16 checkpoint or random model reaches a bf16 GPU without an f32 copy on
// the host.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "indexcache/dtype.h"
#include "indexcache/model_spec.h"
#include "indexcache/weight_store.h"
#include "io/checkpoint_schema.h"

namespace indexcache {

// A host tensor's data and dtype (its shape is the schema's).
struct WeightRef {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  WeightRef() = default;
  WeightRef(std::nullptr_t) {}
  WeightRef(const float* p) : data(p) {}
  WeightRef(const void* p, DType t) : data(p), dtype(t) {}
  explicit operator bool() const { return data != nullptr; }
  bool operator==(const WeightRef& o) const { return data == o.data && dtype == o.dtype; }
  bool operator==(std::nullptr_t) const { return data == nullptr; }
  // The tensor `elements` elements further on (e.g. one expert of a packed tensor).
  WeightRef offset(int64_t elements) const {
    return {static_cast<const char*>(data) + elements * static_cast<int64_t>(dtype_size(dtype)), dtype};
  }
  // Element i as f32 (tests and host-side derivations).
  float at(int64_t i) const {
    float v;
    convert_to_f32(dtype, offset(i).data, 1, &v);
    return v;
  }
};

struct IndexerWeights {
  WeightRef wq_b;          // [Hi*Di, q_lora_rank]
  WeightRef wk;            // [Di, hidden]
  WeightRef k_norm_w;      // [Di]
  WeightRef k_norm_b;      // [Di]
  WeightRef weights_proj;  // [Hi, hidden]
};

struct ExpertWeights {
  WeightRef gate;  // [I, hidden]
  WeightRef up;    // [I, hidden]
  WeightRef down;  // [hidden, I]
};

struct LayerWeights {
  WeightRef input_norm;      // [hidden]
  WeightRef post_attn_norm;  // [hidden]
  WeightRef q_a;             // [q_lora_rank, hidden]
  WeightRef q_a_bias;
  WeightRef q_a_norm;  // [q_lora_rank]
  WeightRef q_b;       // [heads*qk_head_dim, q_lora_rank]
  WeightRef kv_a;      // [kv_lora_rank+rope, hidden]
  WeightRef kv_a_bias;
  WeightRef kv_a_norm;  // [kv_lora_rank]
  WeightRef kv_b;       // [heads*(nope+v), kv_lora_rank]
  // kv_b's key rows transposed per head, for the absorbed form: [heads, kv_lora_rank, nope], in
  // kv_b's dtype (the same values: placement gives what kv_b's rows would).
  WeightRef uk_t;
  WeightRef o;          // [hidden, heads*v]
  WeightRef o_bias;
  bool has_indexer = false;
  IndexerWeights indexer;
  bool moe = false;
  ExpertWeights dense;                 // dense MLP (intermediate_size)
  WeightRef router;       // [E, hidden]
  WeightRef router_bias;  // [E] e_score_correction_bias
  std::vector<ExpertWeights> experts;  // moe_intermediate_size each
  bool has_shared = false;
  ExpertWeights shared;  // moe_intermediate_size * n_shared_experts
};

// Host memory the weights own, uninitialised when made (its maker writes every byte).
struct OwnedBuffer {
  explicit OwnedBuffer(size_t n) : data(new std::byte[n]), bytes(n) {}
  template <class T>
  T* as() const {
    return reinterpret_cast<T*>(data.get());
  }
  std::unique_ptr<std::byte[]> data;
  size_t bytes = 0;
};

struct ModelWeights {
  WeightStore store;               // empty for random weights
  std::vector<OwnedBuffer> owned;  // copied (or random) tensors and uk_t
  size_t owned_bytes() const;
  WeightRef embed;           // [vocab, hidden]
  WeightRef final_norm;      // [hidden]
  WeightRef lm_head;         // [vocab, hidden] (the embedding when tied)
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
// bf16 buffers (2 bytes a parameter, uk_t bf16 too), no file involved: each tensor as its
// TensorInit says, uniform on [-std*sqrt(3), std*sqrt(3)) or the constant fill, rounded to bf16.
// Element i of tensor `name` comes from a counter-based generator (random_fill.h: splitmix64 of
// (seed, name, i)), so the tensors fill in parallel (OpenMP) and the weights are a function of
// `seed` alone, the same on any thread count.
std::unique_ptr<ModelWeights> synthetic_weights(const ModelSpec& spec, uint64_t seed);

// The host tensor schema tensor `t` was bound to (packed experts: that of expert 0), empty if the
// model lacks it.
WeightRef bound_tensor(const ModelWeights& w, const TensorSpec& t);

}  // namespace indexcache
