#include "bench/presets.h"

#include <cstdio>
#include <nlohmann/json.hpp>

#include "indexcache/error.h"
#include "io/checkpoint_schema.h"

namespace indexcache::bench {

namespace {

using nlohmann::json;

// Shapes of GLM-4.7-Flash (glm4_moe_lite) trained into DSA as in the IndexCache paper: MLA with
// q latent, 64 routed experts top-4 + 1 shared, first layer dense; indexer 32 x 128, top-2048.
json glm47flash_dsa() {
  return {{"model_type", "glm_moe_dsa"},
          {"architectures", {"GlmMoeDsaForCausalLM"}},
          {"vocab_size", 154880},
          {"hidden_size", 2048},
          {"num_hidden_layers", 47},
          {"num_attention_heads", 20},
          {"num_key_value_heads", 20},
          {"q_lora_rank", 768},
          {"kv_lora_rank", 512},
          {"qk_nope_head_dim", 192},
          {"qk_rope_head_dim", 64},
          {"v_head_dim", 256},
          {"intermediate_size", 10240},
          {"moe_intermediate_size", 1536},
          {"n_routed_experts", 64},
          {"n_shared_experts", 1},
          {"num_experts_per_tok", 4},
          {"n_group", 1},
          {"topk_group", 1},
          {"norm_topk_prob", true},
          {"routed_scaling_factor", 1.8},
          {"first_k_dense_replace", 1},
          {"rms_norm_eps", 1e-5},
          {"max_position_embeddings", 202752},
          {"rope_parameters", {{"rope_theta", 1000000.0}, {"rope_type", "default"}}},
          {"index_n_heads", 32},
          {"index_head_dim", 128},
          {"index_topk", 2048},
          {"tie_word_embeddings", false},
          {"hidden_act", "silu"},
          {"scoring_func", "sigmoid"}};
}

// GLM-5 (glm_moe_dsa): 78 layers, hidden 6144, 64 heads, 256 experts top-8, 3 dense layers.
json glm5() {
  json j = glm47flash_dsa();
  j["hidden_size"] = 6144;
  j["num_hidden_layers"] = 78;
  j["num_attention_heads"] = 64;
  j["num_key_value_heads"] = 64;
  j["q_lora_rank"] = 2048;
  j["intermediate_size"] = 12288;
  j["moe_intermediate_size"] = 2048;
  j["n_routed_experts"] = 256;
  j["num_experts_per_tok"] = 8;
  j["routed_scaling_factor"] = 2.5;
  j["first_k_dense_replace"] = 3;
  return j;
}

// DeepSeek-V3.2 (deepseek_v32): 61 layers, hidden 7168, 128 heads, group-limited routing (8
// groups, top-4 groups), YaRN factor 40; indexer 64 x 128 with half-split rope.
json dsv32() {
  return {{"model_type", "deepseek_v32"},
          {"architectures", {"DeepseekV32ForCausalLM"}},
          {"vocab_size", 129280},
          {"hidden_size", 7168},
          {"num_hidden_layers", 61},
          {"num_attention_heads", 128},
          {"num_key_value_heads", 128},
          {"q_lora_rank", 1536},
          {"kv_lora_rank", 512},
          {"qk_nope_head_dim", 128},
          {"qk_rope_head_dim", 64},
          {"v_head_dim", 128},
          {"intermediate_size", 18432},
          {"moe_intermediate_size", 2048},
          {"n_routed_experts", 256},
          {"n_shared_experts", 1},
          {"num_experts_per_tok", 8},
          {"n_group", 8},
          {"topk_group", 4},
          {"norm_topk_prob", true},
          {"routed_scaling_factor", 2.5},
          {"first_k_dense_replace", 3},
          {"rms_norm_eps", 1e-6},
          {"max_position_embeddings", 163840},
          {"rope_scaling",
           {{"type", "yarn"},
            {"rope_theta", 10000.0},
            {"factor", 40.0},
            {"original_max_position_embeddings", 4096},
            {"beta_fast", 32},
            {"beta_slow", 1},
            {"mscale", 1.0},
            {"mscale_all_dim", 1.0}}},
          {"index_n_heads", 64},
          {"index_head_dim", 128},
          {"index_topk", 2048},
          {"tie_word_embeddings", false},
          {"hidden_act", "silu"},
          {"scoring_func", "sigmoid"}};
}

// The shapes of the embedded default model (models/dsa-mini/config.json).
json dsa_mini() {
  return {{"model_type", "glm_moe_dsa"},
          {"architectures", {"GlmMoeDsaForCausalLM"}},
          {"vocab_size", 8192},
          {"hidden_size", 256},
          {"num_hidden_layers", 12},
          {"num_attention_heads", 8},
          {"num_key_value_heads", 8},
          {"q_lora_rank", 128},
          {"kv_lora_rank", 128},
          {"qk_nope_head_dim", 32},
          {"qk_rope_head_dim", 32},
          {"v_head_dim", 64},
          {"intermediate_size", 768},
          {"moe_intermediate_size", 128},
          {"n_routed_experts", 8},
          {"n_shared_experts", 1},
          {"num_experts_per_tok", 2},
          {"n_group", 1},
          {"topk_group", 1},
          {"norm_topk_prob", true},
          {"routed_scaling_factor", 2.0},
          {"first_k_dense_replace", 1},
          {"rms_norm_eps", 1e-5},
          {"max_position_embeddings", 4096},
          {"rope_parameters", {{"rope_theta", 10000.0}, {"rope_type", "default"}}},
          {"index_n_heads", 4},
          {"index_head_dim", 64},
          {"index_topk", 256},
          {"tie_word_embeddings", false},
          {"hidden_act", "silu"}};
}

// A few-second CPU smoke model: every code path (dense + MoE layers, shared expert, indexer with a
// selection narrower than the context) at toy width.
json tiny() {
  json j = dsa_mini();
  j["vocab_size"] = 512;
  j["hidden_size"] = 128;
  j["num_hidden_layers"] = 4;
  j["num_attention_heads"] = 4;
  j["num_key_value_heads"] = 4;
  j["q_lora_rank"] = 64;
  j["kv_lora_rank"] = 64;
  j["qk_nope_head_dim"] = 32;
  j["qk_rope_head_dim"] = 16;
  j["v_head_dim"] = 32;
  j["intermediate_size"] = 256;
  j["moe_intermediate_size"] = 64;
  j["index_n_heads"] = 4;
  j["index_head_dim"] = 32;
  j["index_topk"] = 64;
  j["max_position_embeddings"] = 8192;
  return j;
}

struct PresetDef {
  const char* name;
  const char* description;
  json (*make)();
};

const PresetDef kPresets[] = {
    {"tiny", "toy shapes for CPU smoke runs (4 layers, hidden 128)", tiny},
    {"dsa-mini", "the shapes of the embedded model models/dsa-mini", dsa_mini},
    {"glm47flash-dsa", "the IndexCache paper's 30B-class model: GLM-4.7-Flash shapes with a 32 x 128 indexer",
     glm47flash_dsa},
    {"glm5", "GLM-5 (glm_moe_dsa) shapes", glm5},
    {"dsv32", "DeepSeek-V3.2 (deepseek_v32) shapes", dsv32},
};

}  // namespace

std::vector<std::string> preset_names() {
  std::vector<std::string> v;
  for (const auto& p : kPresets) v.push_back(p.name);
  return v;
}

Preset make_preset(const std::string& name, int layers, int experts) {
  const PresetDef* def = nullptr;
  for (const auto& p : kPresets)
    if (name == p.name) def = &p;
  if (!def) {
    std::string known;
    for (const auto& n : preset_names()) known += (known.empty() ? "" : ", ") + n;
    throw_bad_input("--synthetic " + quote_for_message(name), "unknown preset (known: " + known + ")");
  }
  json j = def->make();
  const int n_layers = j["num_hidden_layers"].get<int>();
  const int n_experts = j["n_routed_experts"].get<int>();
  const int n_group = j["n_group"].get<int>();
  const int topk_group = j["topk_group"].get<int>();
  const int per_tok = j["num_experts_per_tok"].get<int>();
  if (layers < 0 || layers > n_layers)
    throw_bad_input("--layers " + std::to_string(layers),
                    "must be between 1 and the preset's " + std::to_string(n_layers) + " layers");
  if (layers > 0) j["num_hidden_layers"] = layers;
  if (experts < 0 || experts > n_experts)
    throw_bad_input("--experts " + std::to_string(experts),
                    "must be between 1 and the preset's " + std::to_string(n_experts) + " routed experts");
  if (experts > 0) {
    // Routing keeps the preset's top-k and groups: the trimmed count must still allow them.
    if (experts % n_group != 0 || experts / n_group < 2)
      throw_bad_input("--experts " + std::to_string(experts),
                      "must be a multiple of the preset's n_group " + std::to_string(n_group) +
                          " with at least 2 experts per group");
    if (per_tok > topk_group * (experts / n_group))
      throw_bad_input("--experts " + std::to_string(experts),
                      "too few for the preset's " + std::to_string(per_tok) + " experts per token" +
                          (n_group > 1 ? " from " + std::to_string(topk_group) + " of " +
                                             std::to_string(n_group) + " groups"
                                       : std::string()));
    j["n_routed_experts"] = experts;
  }
  Preset p;
  p.name = def->name;
  p.description = def->description;
  p.config_json = j.dump(2);
  p.spec = parse_model_spec(p.config_json, "preset " + p.name);
  p.full_layers = n_layers;
  p.full_experts = n_experts;
  return p;
}

int64_t indexer_parameter_count(const ModelSpec& s) { return schema_indexer_parameter_count(s); }

int64_t parameter_count(const ModelSpec& s) { return schema_parameter_count(s); }

std::string format_bytes(double bytes) {
  char buf[64];
  if (bytes >= 1024.0 * 1024 * 1024)
    std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / (1024.0 * 1024 * 1024));
  else if (bytes >= 1024.0 * 1024)
    std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / (1024.0 * 1024));
  else
    std::snprintf(buf, sizeof buf, "%.1f KiB", bytes / 1024.0);
  return buf;
}

}  // namespace indexcache::bench
