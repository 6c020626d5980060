// The one list of a DSA checkpoint's tensors for a ModelSpec: each tensor's Hugging Face name,
// shape, layer and role, when it is present, and how the random-weight generator fills it. The
// loader (src/model/weights.cpp), the random weights of Model::synthetic and the parameter counts
// all visit this list; nothing else spells a tensor name.
//
// Conditions the schema applies itself: the attention biases exist only under `attention_bias`,
// `lm_head.weight` only without `tie_word_embeddings` (tied: lm_head is the embedding), dense
// layers have an MLP and MoE layers a router, routed and (n_shared_experts > 0) shared experts.
// What the caller chooses: the routed experts' layout (both forms are described; a loader takes
// the one the checkpoint has) and, per layer, whether its indexer tensors are listed and required.
//
// Transforms that are not tensors of the file: the loader splits kv_b per head into the
// transposed key rows (uk_t) and packed experts into per-expert views; tied embeddings share one
// buffer.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "indexcache/model_spec.h"

namespace indexcache {

// What a tensor is for (the classes of the parameter counts).
enum class TensorRole : uint8_t {
  kEmbed,
  kFinalNorm,
  kLmHead,
  kNorm,           // a layer's RMSNorm weights: input, post-attention, q_a, kv_a
  kAttention,      // the MLA projections q_a, q_b, kv_a, kv_b, o
  kAttentionBias,  // q_a / kv_a / o biases (config attention_bias)
  kIndexer,        // the lightning indexer: wq_b, wk, k_norm (LayerNorm weight and bias), weights_proj
  kRouter,         // mlp.gate.weight
  kRouterBias,     // mlp.gate.e_score_correction_bias
  kDenseMlp,       // a dense layer's gate / up / down
  kRoutedExpert,   // routed experts, packed or per expert
  kSharedExpert,   // the shared experts (fused into one MLP of n_shared_experts x moe_intermediate_size)
};
const char* tensor_role_name(TensorRole role);

// Which weight a tensor is within its layer (or the model): where a loader puts it.
enum class TensorSlot : uint8_t {
  kEmbed,
  kFinalNorm,
  kLmHead,
  kInputNorm,
  kPostAttnNorm,
  kQa,
  kQaBias,
  kQaNorm,
  kQb,
  kKvA,
  kKvABias,
  kKvANorm,
  kKvB,
  kO,
  kOBias,
  kIndexerWqB,
  kIndexerWk,
  kIndexerKNorm,
  kIndexerKNormBias,
  kIndexerWeightsProj,
  kRouter,
  kRouterBias,
  kGate,  // of the dense MLP, the shared expert or routed expert `expert` (by role)
  kUp,
  kDown,
  kExpertsGateUp,  // packed routed experts [E, 2I, H]: per expert, gate rows 0..I-1, then up rows I..2I-1
  kExpertsDown,    // packed routed experts [E, H, I]
};

// How a checkpoint stores the routed experts of a MoE layer.
enum class ExpertLayout : uint8_t {
  kPacked,     // mlp.experts.gate_up_proj [E, 2I, H] and mlp.experts.down_proj [E, H, I]
  kPerExpert,  // mlp.experts.{e}.{gate,up}_proj.weight [I, H] and down_proj.weight [H, I]
};

// A layer's indexer tensors: listed and required, listed but optional (S layers may ship
// without them), or not listed at all.
enum class IndexerTensors : uint8_t { kRequired, kOptional, kOmitted };

// How the random-weight generator fills a tensor: uniform on [-a, a] with standard deviation
// `std` (a = std * sqrt(3)); std == 0: every value `fill`. Projections get std 1/sqrt(fan_in),
// the residual outputs (o_proj, every down_proj) 1/sqrt(fan_in * 2 * num_layers); norms 1.
struct TensorInit {
  double std = 0;
  float fill = 0;
};

struct TensorSpec {
  std::string name;  // the Hugging Face name
  std::vector<int64_t> shape;
  int layer = -1;   // -1: a global tensor
  int expert = -1;  // a per-expert routed tensor's expert, else -1
  TensorRole role = TensorRole::kEmbed;
  TensorSlot slot = TensorSlot::kEmbed;
  bool optional = false;  // may be absent from a checkpoint (the tensors of a kOptional indexer)
  TensorInit init;
  int64_t numel() const;
};

struct LayerSchemaOptions {
  ExpertLayout experts = ExpertLayout::kPacked;
  IndexerTensors indexer = IndexerTensors::kRequired;
};

struct SchemaOptions {
  ExpertLayout experts = ExpertLayout::kPacked;  // of every MoE layer
  // Per layer (num_layers entries); empty: every layer's indexer kRequired.
  std::vector<IndexerTensors> indexers;
};

using TensorVisitor = std::function<void(const TensorSpec&)>;

// The global tensors: embedding, final norm, lm_head (absent when the embeddings are tied).
void for_each_global_tensor(const ModelSpec& spec, const TensorVisitor& fn);
// Layer `layer`'s tensors in checkpoint order: norms, attention (biases after o_proj), indexer,
// then the dense MLP or router, router bias, routed experts, shared experts.
void for_each_layer_tensor(const ModelSpec& spec, int layer, const LayerSchemaOptions& options,
                           const TensorVisitor& fn);
// Every tensor: the globals, then each layer in order.
void for_each_tensor(const ModelSpec& spec, const SchemaOptions& options, const TensorVisitor& fn);
std::vector<TensorSpec> checkpoint_tensors(const ModelSpec& spec, const SchemaOptions& options = {});

// The tensor whose presence marks layer `layer`'s routed experts as packed.
std::string packed_experts_name(int layer);

// `l` of a "model.layers.{l}.<rest>" name: nullopt for other names and where {l} is not a plain
// decimal number below INT32_MAX (names from a file: "model.layers.x.", "model.layers.99999999999.").
std::optional<int> tensor_layer_index(std::string_view name);

// Parameters of the schema's tensors with every layer's indexer (both expert layouts count the
// same), and the indexers' share.
int64_t schema_parameter_count(const ModelSpec& spec);
int64_t schema_indexer_parameter_count(const ModelSpec& spec);

}  // namespace indexcache
