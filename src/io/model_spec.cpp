// config.json -> ModelSpec. Defaults follow the transformers 5.17 config classes of each family,
// so a config that omits a key means what it means there.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "indexcache/error.h"
#include "indexcache/model_spec.h"

namespace indexcache {

namespace {

using nlohmann::json;

class ConfigReader {
 public:
  ConfigReader(const json& j, std::string source) : j_(j), source_(std::move(source)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    throw_bad_input(source_ + ": key '" + key + "'", why);
  }

  bool has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }

  int get_int(const std::string& key, std::optional<int> dflt, int min_value = 1) const {
    if (!has(key)) {
      if (!dflt) fail(key, "missing");
      return *dflt;
    }
    const json& v = j_.at(key);
    if (!v.is_number_integer()) fail(key, "expected an integer, got " + v.dump());
    int64_t x = v.get<int64_t>();
    if (x < min_value || x > (int64_t{1} << 30))
      fail(key, "value " + std::to_string(x) + " out of range (min " + std::to_string(min_value) + ")");
    return static_cast<int>(x);
  }

  double get_double(const json& obj, const std::string& key, double dflt,
                    const std::string& prefix = "") const {
    if (!obj.contains(key) || obj.at(key).is_null()) return dflt;
    const json& v = obj.at(key);
    if (!v.is_number()) fail(prefix + key, "expected a number, got " + v.dump());
    double x = v.get<double>();
    if (!std::isfinite(x)) fail(prefix + key, "not finite");
    return x;
  }
  double get_double(const std::string& key, double dflt) const { return get_double(j_, key, dflt); }

  bool get_bool(const std::string& key, bool dflt) const {
    if (!has(key)) return dflt;
    const json& v = j_.at(key);
    if (!v.is_boolean()) fail(key, "expected true or false, got " + v.dump());
    return v.get<bool>();
  }

  const json& at(const std::string& key) const { return j_.at(key); }
  const std::string& source() const { return source_; }

 private:
  const json& j_;
  std::string source_;
};

Family detect_family(const json& j, const ConfigReader& r) {
  if (j.contains("model_type") && j["model_type"].is_string()) {
    std::string t = j["model_type"];
    if (t == "glm_moe_dsa") return Family::kGlmMoeDsa;
    if (t == "deepseek_v32") return Family::kDeepseekV32;
    r.fail("model_type", "'" + t + "' is not a DSA model (expected glm_moe_dsa or deepseek_v32)");
  }
  if (j.contains("architectures") && j["architectures"].is_array()) {
    for (const auto& a : j["architectures"]) {
      if (!a.is_string()) continue;
      std::string s = a;
      if (s.rfind("GlmMoeDsa", 0) == 0) return Family::kGlmMoeDsa;
      if (s.rfind("DeepseekV32", 0) == 0) return Family::kDeepseekV32;
    }
  }
  r.fail("model_type", "missing, and no DSA class in 'architectures'");
}

RopeSpec read_rope(const json& j, const ConfigReader& r, int max_pos) {
  // transformers: `rope_scaling` (legacy) wins over `rope_parameters`; rope_theta may sit at the
  // top level; default theta 10000.
  const char* key = nullptr;
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
    key = "rope_scaling";
  else if (j.contains("rope_parameters") && !j["rope_parameters"].is_null())
    key = "rope_parameters";
  RopeSpec rope;
  rope.theta = r.get_double("rope_theta", 10000.0);
  if (!key) return rope;
  const json& p = j.at(key);
  std::string prefix = std::string(key) + ".";
  if (!p.is_object()) r.fail(key, "expected an object");
  rope.theta = r.get_double(p, "rope_theta", rope.theta, prefix);
  if (rope.theta <= 1.0) r.fail(prefix + "rope_theta", "must be > 1");
  std::string type = "default";
  for (const char* tk : {"rope_type", "type"}) {
    if (p.contains(tk)) {
      if (!p[tk].is_string()) r.fail(prefix + tk, "expected a string");
      type = p[tk].get<std::string>();
      break;
    }
  }
  if (type == "default") return rope;
  if (type != "yarn") r.fail(prefix + "rope_type", "'" + type + "' is not supported (default, yarn)");
  rope.type = RopeType::kYarn;
  if (!p.contains("factor") || p["factor"].is_null()) r.fail(prefix + "factor", "missing for yarn");
  rope.factor = r.get_double(p, "factor", 1.0, prefix);
  if (rope.factor <= 0) r.fail(prefix + "factor", "must be > 0");
  rope.original_max_position =
      r.get_double(p, "original_max_position_embeddings", max_pos, prefix);
  if (rope.original_max_position <= 0) r.fail(prefix + "original_max_position_embeddings", "must be > 0");
  // transformers treats 0 / null beta as the default (`or 32`, `or 1`).
  rope.beta_fast = r.get_double(p, "beta_fast", 0, prefix);
  if (rope.beta_fast == 0) rope.beta_fast = 32;
  rope.beta_slow = r.get_double(p, "beta_slow", 0, prefix);
  if (rope.beta_slow == 0) rope.beta_slow = 1;
  if (p.contains("mscale") && !p["mscale"].is_null()) rope.mscale = r.get_double(p, "mscale", 0, prefix);
  if (p.contains("mscale_all_dim") && !p["mscale_all_dim"].is_null())
    rope.mscale_all_dim = r.get_double(p, "mscale_all_dim", 0, prefix);
  if (p.contains("attention_factor") && !p["attention_factor"].is_null())
    rope.attention_factor = r.get_double(p, "attention_factor", 1, prefix);
  if (p.contains("truncate")) {
    if (!p["truncate"].is_boolean()) r.fail(prefix + "truncate", "expected true or false");
    rope.truncate = p["truncate"].get<bool>();
  }
  return rope;
}

PlanKeys read_plan_keys(const json& j, const ConfigReader& r) {
  PlanKeys k;
  if (r.has("indexer_types")) {
    const json& v = j["indexer_types"];
    if (!v.is_array()) r.fail("indexer_types", "expected a list of \"full\"/\"shared\"");
    std::vector<std::string> types;
    for (const auto& e : v) {
      if (!e.is_string()) r.fail("indexer_types", "expected strings, got " + e.dump());
      types.push_back(e.get<std::string>());
    }
    k.indexer_types = std::move(types);
  }
  if (r.has("index_topk_pattern")) {
    const json& v = j["index_topk_pattern"];
    if (!v.is_string()) r.fail("index_topk_pattern", "expected a string of F/S");
    k.index_topk_pattern = v.get<std::string>();
  }
  if (r.has("index_topk_freq")) k.index_topk_freq = r.get_int("index_topk_freq", std::nullopt, 0);
  if (r.has("index_skip_topk_offset"))
    k.index_skip_topk_offset = r.get_int("index_skip_topk_offset", std::nullopt, 0);
  return k;
}

std::vector<int64_t> read_token_ids(const json& j, const ConfigReader& r, const std::string& key) {
  std::vector<int64_t> ids;
  if (!r.has(key)) return ids;
  const json& v = j[key];
  if (v.is_number_integer()) {
    ids.push_back(v.get<int64_t>());
  } else if (v.is_array()) {
    for (const auto& e : v) {
      if (!e.is_number_integer()) r.fail(key, "expected integers");
      ids.push_back(e.get<int64_t>());
    }
  } else {
    r.fail(key, "expected an integer or a list of integers");
  }
  return ids;
}

void validate(const ModelSpec& s, const ConfigReader& r) {
  if (s.qk_rope_head_dim % 2 != 0) r.fail("qk_rope_head_dim", "must be even");
  if (s.index_head_dim < s.qk_rope_head_dim)
    r.fail("index_head_dim", "must be at least qk_rope_head_dim");
  if (s.n_routed_experts % s.n_group != 0) r.fail("n_group", "must divide n_routed_experts");
  if (s.topk_group > s.n_group) r.fail("topk_group", "must be at most n_group");
  if (s.n_routed_experts / s.n_group < 2)
    r.fail("n_group", "each expert group needs at least 2 experts (group score = top-2 sum)");
  if (s.num_experts_per_tok > s.topk_group * (s.n_routed_experts / s.n_group))
    r.fail("num_experts_per_tok", "more than the experts in the selected groups");
}

}  // namespace

std::string family_name(Family f) {
  return f == Family::kGlmMoeDsa ? "glm_moe_dsa" : "deepseek_v32";
}

double ModelSpec::rope_attention_factor() const {
  if (rope.type != RopeType::kYarn) return 1.0;
  if (rope.attention_factor) return *rope.attention_factor;
  auto get_mscale = [](double scale, double m) {
    return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0;
  };
  // transformers: both mscale and mscale_all_dim set and non-zero -> ratio; else get_mscale(factor).
  if (rope.mscale && rope.mscale_all_dim && *rope.mscale != 0 && *rope.mscale_all_dim != 0)
    return get_mscale(rope.factor, *rope.mscale) / get_mscale(rope.factor, *rope.mscale_all_dim);
  return get_mscale(rope.factor, 1.0);
}

double ModelSpec::attention_scale() const {
  double scale = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
  if (rope.type == RopeType::kYarn && rope.mscale_all_dim && *rope.mscale_all_dim != 0) {
    double m = rope.factor <= 1 ? 1.0 : 0.1 * *rope.mscale_all_dim * std::log(rope.factor) + 1.0;
    scale *= m * m;
  }
  return scale;
}

// quantization_config: absent, or block FP8 (fmt e4m3, dynamic activations, [128, 128] blocks,
// scale_fmt absent or ue8m0). modules_to_not_convert is not read: whether a tensor is quantized is
// decided by its dtype and its scale (GLM's list names a tensor that does not exist).
QuantSpec read_quant(const json& j, const ConfigReader& r) {
  QuantSpec q;
  if (!r.has("quantization_config")) return q;
  const json& c = j.at("quantization_config");
  const std::string p = "quantization_config.";
  if (!c.is_object()) r.fail("quantization_config", "expected an object, got " + c.dump());
  auto text = [&](const char* key) -> std::optional<std::string> {
    if (!c.contains(key) || c.at(key).is_null()) return std::nullopt;
    if (!c.at(key).is_string()) r.fail(p + key, "expected a string, got " + c.at(key).dump());
    return c.at(key).get<std::string>();
  };
  const auto method = text("quant_method");
  if (!method) r.fail(p + "quant_method", "missing");
  if (*method != "fp8") r.fail(p + "quant_method", "'" + *method + "' is not supported (fp8)");
  if (const auto fmt = text("fmt"); fmt && *fmt != "e4m3") r.fail(p + "fmt", "'" + *fmt + "' is not supported (e4m3)");
  if (const auto a = text("activation_scheme"); a && *a != "dynamic")
    r.fail(p + "activation_scheme", "'" + *a + "' is not supported (dynamic)");
  if (const auto sf = text("scale_fmt")) {
    if (*sf != "ue8m0") r.fail(p + "scale_fmt", "'" + *sf + "' is not supported (ue8m0, or absent)");
    q.ue8m0 = true;
  }
  if (!c.contains("weight_block_size")) r.fail(p + "weight_block_size", "missing");
  const json& b = c.at("weight_block_size");
  if (!b.is_array() || b.size() != 2 || !b[0].is_number_integer() || !b[1].is_number_integer())
    r.fail(p + "weight_block_size", "expected [rows, cols], got " + b.dump());
  q.block_rows = b[0].get<int>();
  q.block_cols = b[1].get<int>();
  if (q.block_rows != 128 || q.block_cols != 128)
    r.fail(p + "weight_block_size", "only [128, 128] blocks are supported, got " + b.dump());
  q.fp8 = true;
  return q;
}

ModelSpec parse_model_spec(const std::string& json_text, const std::string& source) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw_bad_input(source, "invalid JSON");
  if (!j.is_object()) throw_bad_input(source, "expected a JSON object");
  ConfigReader r(j, source);

  ModelSpec s;
  s.family = detect_family(j, r);
  s.model_type = family_name(s.family);
  const bool glm = s.family == Family::kGlmMoeDsa;

  if (!r.has("q_lora_rank"))
    r.fail("q_lora_rank", "missing or null: the DSA indexer needs the query latent (q_lora_rank)");
  s.vocab_size = r.get_int("vocab_size", glm ? 154880 : 129280);
  s.hidden_size = r.get_int("hidden_size", glm ? 6144 : 7168);
  s.num_layers = r.get_int("num_hidden_layers", glm ? 78 : 61);
  s.num_heads = r.get_int("num_attention_heads", glm ? 64 : 128);
  int kv_heads = r.get_int("num_key_value_heads", s.num_heads);
  if (kv_heads != s.num_heads) r.fail("num_key_value_heads", "MLA needs num_key_value_heads == num_attention_heads");
  s.q_lora_rank = r.get_int("q_lora_rank", std::nullopt);
  s.kv_lora_rank = r.get_int("kv_lora_rank", 512);
  s.qk_nope_head_dim = r.get_int("qk_nope_head_dim", glm ? 192 : 128);
  s.qk_rope_head_dim = r.get_int("qk_rope_head_dim", 64);
  s.v_head_dim = r.get_int("v_head_dim", glm ? 256 : 128);
  s.intermediate_size = r.get_int("intermediate_size", glm ? 12288 : 18432);
  s.moe_intermediate_size = r.get_int("moe_intermediate_size", 2048);
  s.n_routed_experts = r.get_int("n_routed_experts", 256);
  if (r.has("num_experts")) s.n_routed_experts = r.get_int("num_experts", std::nullopt);
  s.n_shared_experts = r.get_int("n_shared_experts", 1, 0);
  s.num_experts_per_tok = r.get_int("num_experts_per_tok", 8);
  s.n_group = r.get_int("n_group", glm ? 1 : 8);
  s.topk_group = r.get_int("topk_group", glm ? 1 : 4);
  s.norm_topk_prob = r.get_bool("norm_topk_prob", true);
  s.routed_scaling_factor = r.get_double("routed_scaling_factor", 2.5);
  s.rms_norm_eps = r.get_double("rms_norm_eps", glm ? 1e-5 : 1e-6);
  if (s.rms_norm_eps < 0) r.fail("rms_norm_eps", "must be >= 0");
  s.max_position_embeddings = r.get_int("max_position_embeddings", glm ? 202752 : 163840);
  s.tie_word_embeddings = r.get_bool("tie_word_embeddings", false);
  s.attention_bias = r.get_bool("attention_bias", false);
  s.index_n_heads = r.get_int("index_n_heads", glm ? 32 : 64);
  s.index_head_dim = r.get_int("index_head_dim", 128);
  s.index_topk = r.get_int("index_topk", 2048);

  if (r.has("hidden_act")) {
    if (!j["hidden_act"].is_string() || j["hidden_act"] != "silu")
      r.fail("hidden_act", "only silu is supported, got " + j["hidden_act"].dump());
  }
  if (r.has("scoring_func")) {
    if (!j["scoring_func"].is_string() || j["scoring_func"] != "sigmoid")
      r.fail("scoring_func", "only sigmoid routing is supported, got " + j["scoring_func"].dump());
  }

  if (r.has("mlp_layer_types")) {
    const json& v = j["mlp_layer_types"];
    if (!v.is_array() || static_cast<int>(v.size()) != s.num_layers)
      r.fail("mlp_layer_types", "expected a list of " + std::to_string(s.num_layers) + " entries");
    for (const auto& e : v) {
      if (e == "dense")
        s.layer_is_moe.push_back(false);
      else if (e == "sparse")
        s.layer_is_moe.push_back(true);
      else
        r.fail("mlp_layer_types", "unknown entry " + e.dump() + " (dense or sparse)");
    }
  } else {
    int n_dense = std::min(r.get_int("first_k_dense_replace", 3, 0), s.num_layers);
    for (int i = 0; i < s.num_layers; ++i) s.layer_is_moe.push_back(i >= n_dense);
  }

  s.quant = read_quant(j, r);
  s.num_mtp_layers = r.get_int("num_nextn_predict_layers", 0, 0);
  s.rope = read_rope(j, r, s.max_position_embeddings);
  s.plan_keys = read_plan_keys(j, r);
  s.eos_token_ids = read_token_ids(j, r, "eos_token_id");
  auto bos = read_token_ids(j, r, "bos_token_id");
  if (!bos.empty()) s.bos_token_id = bos.front();
  validate(s, r);
  return s;
}

std::vector<int64_t> load_eos_ids(const std::string& dir, const ModelSpec& spec) {
  std::vector<int64_t> ids = spec.eos_token_ids;
  const std::string path = dir + "/generation_config.json";
  std::ifstream f(path, std::ios::binary);
  if (!f) return ids;
  std::ostringstream ss;
  ss << f.rdbuf();
  json j = json::parse(ss.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw_bad_input(path, "invalid JSON");
  ConfigReader r(j, path);
  for (int64_t id : read_token_ids(j, r, "eos_token_id"))
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  return ids;
}

ModelSpec load_model_spec(const std::string& dir) {
  std::string path = dir + "/config.json";
  std::ifstream f(path, std::ios::binary);
  if (!f) throw_bad_input(path, "cannot open");
  std::ostringstream ss;
  ss << f.rdbuf();
  return parse_model_spec(ss.str(), path);
}

}  // namespace indexcache
