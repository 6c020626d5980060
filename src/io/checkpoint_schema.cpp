#include "io/checkpoint_schema.h"

#include <charconv>
#include <cmath>
#include <limits>

namespace indexcache {

namespace {

double inv_sqrt(int64_t n) { return 1.0 / std::sqrt(static_cast<double>(n)); }

// Builds the TensorSpecs of one layer (or of the globals) and hands each to the visitor.
struct Emitter {
  const TensorVisitor& fn;
  int layer = -1;
  bool optional = false;

  void emit(std::string name, std::vector<int64_t> shape, TensorRole role, TensorSlot slot, TensorInit init,
            int expert = -1) const {
    TensorSpec t;
    t.name = std::move(name);
    t.shape = std::move(shape);
    t.layer = layer;
    t.expert = expert;
    t.role = role;
    t.slot = slot;
    t.optional = optional;
    t.init = init;
    fn(t);
  }
  // A matrix [out, in] drawn with std 1/sqrt(in) times `scale` (the residual shrink).
  void matrix(std::string name, int64_t out, int64_t in, TensorRole role, TensorSlot slot, double scale = 1.0,
              int expert = -1) const {
    emit(std::move(name), {out, in}, role, slot, {scale * inv_sqrt(in), 0.0f}, expert);
  }
  void filled(std::string name, int64_t n, TensorRole role, TensorSlot slot, float value) const {
    emit(std::move(name), {n}, role, slot, {0.0, value});
  }
  // gate_proj / up_proj [inter, hidden] and down_proj [hidden, inter] under `prefix`.
  void mlp(const std::string& prefix, int64_t hidden, int64_t inter, TensorRole role, double res,
           int expert = -1) const {
    matrix(prefix + "gate_proj.weight", inter, hidden, role, TensorSlot::kGate, 1.0, expert);
    matrix(prefix + "up_proj.weight", inter, hidden, role, TensorSlot::kUp, 1.0, expert);
    matrix(prefix + "down_proj.weight", hidden, inter, role, TensorSlot::kDown, res, expert);
  }
};

std::string layer_prefix(int layer) { return "model.layers." + std::to_string(layer) + "."; }

bool layer_is_moe(const ModelSpec& s, int layer) {
  return layer < static_cast<int>(s.layer_is_moe.size()) && s.layer_is_moe[layer];
}

}  // namespace

const char* tensor_role_name(TensorRole role) {
  switch (role) {
    case TensorRole::kEmbed: return "embed";
    case TensorRole::kFinalNorm: return "final_norm";
    case TensorRole::kLmHead: return "lm_head";
    case TensorRole::kNorm: return "norm";
    case TensorRole::kAttention: return "attention";
    case TensorRole::kAttentionBias: return "attention_bias";
    case TensorRole::kIndexer: return "indexer";
    case TensorRole::kRouter: return "router";
    case TensorRole::kRouterBias: return "router_bias";
    case TensorRole::kDenseMlp: return "dense_mlp";
    case TensorRole::kRoutedExpert: return "routed_expert";
    case TensorRole::kSharedExpert: return "shared_expert";
  }
  return "?";
}

int64_t TensorSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string packed_experts_name(int layer) { return layer_prefix(layer) + "mlp.experts.gate_up_proj"; }

std::optional<int> tensor_layer_index(std::string_view name) {
  constexpr std::string_view kPrefix = "model.layers.";
  if (name.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
  name.remove_prefix(kPrefix.size());
  const size_t dot = name.find('.');
  if (dot == 0 || dot == std::string_view::npos || dot > 10) return std::nullopt;
  const std::string_view digits = name.substr(0, dot);
  if (digits.size() > 1 && digits[0] == '0') return std::nullopt;  // "01": not how any writer spells 1
  int64_t l = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), l);
  if (ec != std::errc() || end != digits.data() + digits.size() || l < 0 || l >= std::numeric_limits<int>::max())
    return std::nullopt;
  return static_cast<int>(l);
}

void for_each_global_tensor(const ModelSpec& s, const TensorVisitor& fn) {
  const Emitter e{fn};
  const int64_t V = s.vocab_size, H = s.hidden_size;
  e.emit("model.embed_tokens.weight", {V, H}, TensorRole::kEmbed, TensorSlot::kEmbed, {1.0, 0.0f});
  e.filled("model.norm.weight", H, TensorRole::kFinalNorm, TensorSlot::kFinalNorm, 1.0f);
  if (!s.tie_word_embeddings)
    e.matrix("lm_head.weight", V, H, TensorRole::kLmHead, TensorSlot::kLmHead);
}

void for_each_layer_tensor(const ModelSpec& s, int l, const LayerSchemaOptions& o, const TensorVisitor& fn) {
  using R = TensorRole;
  using S = TensorSlot;
  Emitter e{fn, l};
  const std::string p = layer_prefix(l);
  const std::string a = p + "self_attn.";
  const int64_t H = s.hidden_size, nh = s.num_heads, qlr = s.q_lora_rank, kvlr = s.kv_lora_rank;
  const int64_t rope = s.qk_rope_head_dim, vd = s.v_head_dim;
  const double res = 1.0 / std::sqrt(2.0 * s.num_layers);  // residual outputs shrink with depth
  e.filled(p + "input_layernorm.weight", H, R::kNorm, S::kInputNorm, 1.0f);
  e.filled(p + "post_attention_layernorm.weight", H, R::kNorm, S::kPostAttnNorm, 1.0f);
  e.matrix(a + "q_a_proj.weight", qlr, H, R::kAttention, S::kQa);
  e.filled(a + "q_a_layernorm.weight", qlr, R::kNorm, S::kQaNorm, 1.0f);
  e.matrix(a + "q_b_proj.weight", nh * s.qk_head_dim(), qlr, R::kAttention, S::kQb);
  e.matrix(a + "kv_a_proj_with_mqa.weight", kvlr + rope, H, R::kAttention, S::kKvA);
  e.filled(a + "kv_a_layernorm.weight", kvlr, R::kNorm, S::kKvANorm, 1.0f);
  e.matrix(a + "kv_b_proj.weight", nh * (s.qk_nope_head_dim + vd), kvlr, R::kAttention, S::kKvB);
  e.matrix(a + "o_proj.weight", H, nh * vd, R::kAttention, S::kO, res);
  if (s.attention_bias) {
    e.filled(a + "q_a_proj.bias", qlr, R::kAttentionBias, S::kQaBias, 0.0f);
    e.filled(a + "kv_a_proj_with_mqa.bias", kvlr + rope, R::kAttentionBias, S::kKvABias, 0.0f);
    e.filled(a + "o_proj.bias", H, R::kAttentionBias, S::kOBias, 0.0f);
  }
  if (o.indexer != IndexerTensors::kOmitted) {
    const std::string ix = a + "indexer.";
    const int64_t hi = s.index_n_heads, di = s.index_head_dim;
    e.optional = o.indexer == IndexerTensors::kOptional;
    e.matrix(ix + "wq_b.weight", hi * di, qlr, R::kIndexer, S::kIndexerWqB);
    e.matrix(ix + "wk.weight", di, H, R::kIndexer, S::kIndexerWk);
    e.filled(ix + "k_norm.weight", di, R::kIndexer, S::kIndexerKNorm, 1.0f);
    e.filled(ix + "k_norm.bias", di, R::kIndexer, S::kIndexerKNormBias, 0.0f);
    e.matrix(ix + "weights_proj.weight", hi, H, R::kIndexer, S::kIndexerWeightsProj);
    e.optional = false;
  }
  const std::string m = p + "mlp.";
  if (!layer_is_moe(s, l)) {
    e.mlp(m, H, s.intermediate_size, R::kDenseMlp, res);
    return;
  }
  const int64_t E = s.n_routed_experts, I = s.moe_intermediate_size;
  e.matrix(m + "gate.weight", E, H, R::kRouter, S::kRouter);
  e.emit(m + "gate.e_score_correction_bias", {E}, R::kRouterBias, S::kRouterBias, {0.01, 0.0f});
  if (o.experts == ExpertLayout::kPacked) {
    e.emit(m + "experts.gate_up_proj", {E, 2 * I, H}, R::kRoutedExpert, S::kExpertsGateUp, {inv_sqrt(H), 0.0f});
    e.emit(m + "experts.down_proj", {E, H, I}, R::kRoutedExpert, S::kExpertsDown, {res * inv_sqrt(I), 0.0f});
  } else {
    for (int x = 0; x < E; ++x) e.mlp(m + "experts." + std::to_string(x) + ".", H, I, R::kRoutedExpert, res, x);
  }
  if (s.n_shared_experts > 0) e.mlp(m + "shared_experts.", H, I * s.n_shared_experts, R::kSharedExpert, res);
}

void for_each_tensor(const ModelSpec& s, const SchemaOptions& o, const TensorVisitor& fn) {
  for_each_global_tensor(s, fn);
  for (int l = 0; l < s.num_layers; ++l) {
    LayerSchemaOptions lo;
    lo.experts = o.experts;
    if (l < static_cast<int>(o.indexers.size())) lo.indexer = o.indexers[l];
    for_each_layer_tensor(s, l, lo, fn);
  }
}

std::vector<TensorSpec> checkpoint_tensors(const ModelSpec& s, const SchemaOptions& o) {
  std::vector<TensorSpec> v;
  for_each_tensor(s, o, [&](const TensorSpec& t) { v.push_back(t); });
  return v;
}

int64_t schema_parameter_count(const ModelSpec& s) {
  int64_t n = 0;
  for_each_tensor(s, {}, [&](const TensorSpec& t) { n += t.numel(); });
  return n;
}

int64_t schema_indexer_parameter_count(const ModelSpec& s) {
  int64_t n = 0;
  for_each_tensor(s, {}, [&](const TensorSpec& t) {
    if (t.role == TensorRole::kIndexer) n += t.numel();
  });
  return n;
}

}  // namespace indexcache
