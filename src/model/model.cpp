#include <filesystem>

#include "indexcache/error.h"
#include "indexcache/model.h"
#include "model/weights.h"

namespace indexcache {

Model::~Model() = default;

LoadOptions LoadOptions::for_plan(const IndexPlan& plan) {
  LoadOptions lo;
  for (int i = 0; i < plan.num_layers(); ++i) lo.require_indexer.push_back(plan.is_full(i));
  lo.only_required_indexers = true;
  return lo;
}

std::unique_ptr<Model> Model::load(const std::string& dir, const LoadOptions& options) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) throw_bad_input(dir, "not a model directory");
  auto m = std::unique_ptr<Model>(new Model());
  m->dir_ = dir;
  m->spec_ = load_model_spec(dir);
  m->config_plan_ = IndexPlan::from_config(m->spec_, dir + "/config.json");
  std::vector<bool> require = options.require_indexer;
  if (require.empty()) {
    for (int i = 0; i < m->spec_.num_layers; ++i) require.push_back(m->config_plan_.is_full(i));
  }
  if (static_cast<int>(require.size()) != m->spec_.num_layers)
    throw_bad_input(dir, "indexer requirement list does not match the layer count");
  m->weights_ = load_weights(dir, m->spec_, require, options.only_required_indexers);
  return m;
}

bool Model::has_indexer(int layer) const { return weights_->layers.at(layer).has_indexer; }

void Model::check_plan(const IndexPlan& plan) const {
  if (plan.num_layers() != spec_.num_layers)
    throw_bad_input("plan '" + plan.pattern() + "'",
                    "has " + std::to_string(plan.num_layers()) + " layers, the model has " +
                        std::to_string(spec_.num_layers));
  for (int i = 0; i < spec_.num_layers; ++i) {
    if (plan.is_full(i) && !has_indexer(i))
      throw_bad_input("plan '" + plan.pattern() + "'",
                      "layer " + std::to_string(i) + " is F but the checkpoint has no indexer weights for it");
  }
}

int64_t Model::indexer_parameter_count() const {
  const auto& s = spec_;
  const int64_t per_layer = int64_t{s.index_n_heads} * s.index_head_dim * s.q_lora_rank +
                            int64_t{s.index_head_dim} * s.hidden_size + 2 * s.index_head_dim +
                            int64_t{s.index_n_heads} * s.hidden_size;
  return per_layer * s.num_layers;
}

int64_t Model::parameter_count() const {
  const auto& s = spec_;
  const int64_t H = s.hidden_size, nh = s.num_heads;
  int64_t attn = int64_t{s.q_lora_rank} * H + s.q_lora_rank + nh * s.qk_head_dim() * s.q_lora_rank +
                 (int64_t{s.kv_lora_rank} + s.qk_rope_head_dim) * H + s.kv_lora_rank +
                 nh * (s.qk_nope_head_dim + s.v_head_dim) * s.kv_lora_rank + H * nh * s.v_head_dim + 2 * H;
  int64_t total = int64_t{s.vocab_size} * H * (s.tie_word_embeddings ? 1 : 2) + H;
  for (int i = 0; i < s.num_layers; ++i) {
    total += attn;
    if (s.layer_is_moe[i]) {
      total += int64_t{s.n_routed_experts} * (H + 1) +
               (int64_t{s.n_routed_experts} + s.n_shared_experts) * 3 * H * s.moe_intermediate_size;
    } else {
      total += 3 * H * s.intermediate_size;
    }
  }
  return total + indexer_parameter_count();
}

}  // namespace indexcache
