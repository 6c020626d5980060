// config.json -> ModelSpec. Defaults follow the transformers 5.17 config classes of each family,
// so a config that omits a key means what it means there.
#include <algorithm>
#include <filesystem>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/json_input.h"
#include "core/mapped_file.h"
#include "indexcache/error.h"
#include "indexcache/model_spec.h"

namespace indexcache {

namespace {

using nlohmann::json;
namespace lim = spec_limits;

class ConfigReader {
 public:
  ConfigReader(const json& j, std::string source) : j_(j), source_(std::move(source)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    throw_bad_input(source_ + ": key '" + key + "'", why);
  }

  bool has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }

  // An integer key in [min_value, max_value] (spec_limits); 2^32 + 2 is out of range, not 2.
  int get_int(const std::string& key, std::optional<int> dflt, int min_value, int max_value) const {
    if (!has(key)) {
      if (!dflt) fail(key, "missing");
      return *dflt;
    }
    const json& v = j_.at(key);
    if (!v.is_number_integer()) fail(key, "expected an integer, got " + json_for_message(v));
    const auto x = json_integer_in(v, min_value, max_value);
    if (!x)
      fail(key, "value " + json_for_message(v) + " out of range [" + std::to_string(min_value) + ", " +
                    std::to_string(max_value) + "]");
    return static_cast<int>(*x);
  }

  double get_double(const json& obj, const std::string& key, double dflt,
                    const std::string& prefix = "") const {
    if (!obj.contains(key) || obj.at(key).is_null()) return dflt;
    const json& v = obj.at(key);
    if (!v.is_number()) fail(prefix + key, "expected a number, got " + json_for_message(v));
    double x = v.get<double>();
    if (!std::isfinite(x)) fail(prefix + key, "not finite");
    return x;
  }
  // As get_double, and the value must lie in [lo, hi] (in (lo, hi] when `open_low`).
  double get_double_in(const json& obj, const std::string& key, double dflt, double lo, double hi,
                       bool open_low, const std::string& prefix = "") const {
    const double x = get_double(obj, key, dflt, prefix);
    if (x < lo || x > hi || (open_low && x == lo))
      fail(prefix + key, "value " + json_for_message(obj.at(key)) + " outside " + (open_low ? "(" : "[") +
                             number_text(lo) + ", " + number_text(hi) + "]");
    return x;
  }
  static std::string number_text(double x) {
    std::ostringstream o;
    o << x;
    return o.str();
  }
  double get_double(const std::string& key, double dflt) const { return get_double(j_, key, dflt); }

  bool get_bool(const std::string& key, bool dflt) const {
    if (!has(key)) return dflt;
    const json& v = j_.at(key);
    if (!v.is_boolean()) fail(key, "expected true or false, got " + json_for_message(v));
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
    r.fail("model_type", quote_for_message(t.substr(0, 80)) + (t.size() > 80 ? "..." : "") +
                             " is not a DSA model (expected glm_moe_dsa or deepseek_v32)");
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

// RoPE parameters, checked so that the tables and scales they give are finite: theta in (1,
// kMaxRopeTheta]; YaRN (what transformers' validation warns about, made errors here): factor in
// [1, kMaxRopeFactor], beta_fast > beta_slow > 0, original_max_position_embeddings in [1,
// kMaxPositions], mscale / mscale_all_dim in [0, kMaxMscale], attention_factor in (0, kMaxMscale].
RopeSpec read_rope(const json& j, const ConfigReader& r, int max_pos) {
  // transformers: `rope_scaling` (legacy) wins over `rope_parameters`; rope_theta may sit at the
  // top level; default theta 10000.
  const char* key = nullptr;
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
    key = "rope_scaling";
  else if (j.contains("rope_parameters") && !j["rope_parameters"].is_null())
    key = "rope_parameters";
  RopeSpec rope;
  rope.theta = r.get_double_in(j, "rope_theta", 10000.0, 1.0, lim::kMaxRopeTheta, /*open_low=*/true);
  if (!key) return rope;
  const json& p = j.at(key);
  std::string prefix = std::string(key) + ".";
  if (!p.is_object()) r.fail(key, "expected an object, got " + json_for_message(p));
  rope.theta = r.get_double_in(p, "rope_theta", rope.theta, 1.0, lim::kMaxRopeTheta, /*open_low=*/true, prefix);
  std::string type = "default";
  for (const char* tk : {"rope_type", "type"}) {
    if (p.contains(tk)) {
      if (!p[tk].is_string()) r.fail(prefix + tk, "expected a string, got " + json_for_message(p[tk]));
      type = p[tk].get<std::string>();
      break;
    }
  }
  if (type == "default") return rope;
  if (type != "yarn")
    r.fail(prefix + "rope_type", json_for_message(json(type)) + " is not supported (default, yarn)");
  rope.type = RopeType::kYarn;
  if (!p.contains("factor") || p["factor"].is_null()) r.fail(prefix + "factor", "missing for yarn");
  rope.factor = r.get_double_in(p, "factor", 1.0, 1.0, lim::kMaxRopeFactor, false, prefix);
  rope.original_max_position = r.get_double_in(p, "original_max_position_embeddings", max_pos, 1.0,
                                               lim::kMaxPositions, false, prefix);
  // transformers treats 0 / null beta as the default (`or 32`, `or 1`).
  rope.beta_fast = r.get_double(p, "beta_fast", 0, prefix);
  if (rope.beta_fast == 0) rope.beta_fast = 32;
  rope.beta_slow = r.get_double(p, "beta_slow", 0, prefix);
  if (rope.beta_slow == 0) rope.beta_slow = 1;
  if (rope.beta_fast < 0) r.fail(prefix + "beta_fast", "must be > 0, got " + json_for_message(p["beta_fast"]));
  if (rope.beta_slow < 0) r.fail(prefix + "beta_slow", "must be > 0, got " + json_for_message(p["beta_slow"]));
  if (!(rope.beta_fast > rope.beta_slow))
    r.fail(prefix + "beta_fast", "must be greater than beta_slow (" + ConfigReader::number_text(rope.beta_fast) +
                                     " <= " + ConfigReader::number_text(rope.beta_slow) + ")");
  if (p.contains("mscale") && !p["mscale"].is_null())
    rope.mscale = r.get_double_in(p, "mscale", 0, 0, lim::kMaxMscale, false, prefix);
  if (p.contains("mscale_all_dim") && !p["mscale_all_dim"].is_null())
    rope.mscale_all_dim = r.get_double_in(p, "mscale_all_dim", 0, 0, lim::kMaxMscale, false, prefix);
  if (p.contains("attention_factor") && !p["attention_factor"].is_null())
    rope.attention_factor = r.get_double_in(p, "attention_factor", 1, 0, lim::kMaxMscale, true, prefix);
  if (p.contains("truncate")) {
    if (!p["truncate"].is_boolean())
      r.fail(prefix + "truncate", "expected true or false, got " + json_for_message(p["truncate"]));
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
      if (!e.is_string()) r.fail("indexer_types", "expected strings, got " + json_for_message(e));
      types.push_back(e.get<std::string>());
    }
    k.indexer_types = std::move(types);
  }
  if (r.has("index_topk_pattern")) {
    const json& v = j["index_topk_pattern"];
    if (!v.is_string()) r.fail("index_topk_pattern", "expected a string of F/S, got " + json_for_message(v));
    k.index_topk_pattern = v.get<std::string>();
  }
  if (r.has("index_topk_freq")) k.index_topk_freq = r.get_int("index_topk_freq", std::nullopt, 0, INT32_MAX);
  if (r.has("index_skip_topk_offset"))
    k.index_skip_topk_offset = r.get_int("index_skip_topk_offset", std::nullopt, 0, INT32_MAX);
  return k;
}

std::vector<int64_t> read_token_ids(const json& j, const ConfigReader& r, const std::string& key) {
  std::vector<int64_t> ids;
  if (!r.has(key)) return ids;
  const json& v = j[key];
  auto id_of = [&](const json& e) {
    const auto id = json_integer_in(e, 0, lim::kMaxTokenId);
    if (!id)
      r.fail(key, "expected token ids (integers in [0, " + std::to_string(lim::kMaxTokenId) + "]), got " +
                      json_for_message(e));
    return *id;
  };
  if (v.is_array()) {
    if (v.size() > 4096) r.fail(key, "more than 4096 token ids");
    for (const auto& e : v) ids.push_back(id_of(e));
  } else {
    ids.push_back(id_of(v));
  }
  return ids;
}

void validate(const ModelSpec& s, const ConfigReader& r) {
  if (s.qk_rope_head_dim % 2 != 0) r.fail("qk_rope_head_dim", "must be even");
  // GLM configs carry the derived qk_head_dim; one that disagrees is a config for other weights.
  // (`head_dim` is not checked: GLM-5.2 ships a head_dim that is wrong for MLA.)
  if (r.has("qk_head_dim")) {
    const int qk = r.get_int("qk_head_dim", std::nullopt, 1, 2 * lim::kMaxHeadDim);
    if (qk != s.qk_head_dim())
      r.fail("qk_head_dim", std::to_string(qk) + " is not qk_nope_head_dim + qk_rope_head_dim = " +
                                std::to_string(s.qk_nope_head_dim) + " + " + std::to_string(s.qk_rope_head_dim));
  }
  if (s.index_head_dim < s.qk_rope_head_dim)
    r.fail("index_head_dim", "must be at least qk_rope_head_dim");
  if (s.n_routed_experts % s.n_group != 0) r.fail("n_group", "must divide n_routed_experts");
  if (s.topk_group > s.n_group) r.fail("topk_group", "must be at most n_group");
  if (s.n_routed_experts / s.n_group < 2)
    r.fail("n_group", "each expert group needs at least 2 experts (group score = top-2 sum)");
  if (s.num_experts_per_tok > s.topk_group * (s.n_routed_experts / s.n_group))
    r.fail("num_experts_per_tok", "more than the experts in the selected groups");
  // The scales RoPE and attention use, from the parameters checked one by one above.
  const double af = s.rope_attention_factor(), as = s.attention_scale();
  if (!std::isfinite(af) || af <= 0)
    r.fail(s.rope.attention_factor ? "rope_parameters.attention_factor" : "rope_parameters.mscale",
           "gives a RoPE attention factor of " + ConfigReader::number_text(af) + " (must be finite and > 0)");
  if (!std::isfinite(as) || as <= 0)
    r.fail("rope_parameters.mscale_all_dim",
           "gives an attention scale of " + ConfigReader::number_text(as) + " (must be finite and > 0)");
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
  if (!c.is_object()) r.fail("quantization_config", "expected an object, got " + json_for_message(c));
  auto text = [&](const char* key) -> std::optional<std::string> {
    if (!c.contains(key) || c.at(key).is_null()) return std::nullopt;
    if (!c.at(key).is_string()) r.fail(p + key, "expected a string, got " + json_for_message(c.at(key)));
    return c.at(key).get<std::string>();
  };
  auto shown = [](const std::string& v) { return json_for_message(json(v)); };
  const auto method = text("quant_method");
  if (!method) r.fail(p + "quant_method", "missing");
  if (*method != "fp8") r.fail(p + "quant_method", shown(*method) + " is not supported (fp8)");
  if (const auto fmt = text("fmt"); fmt && *fmt != "e4m3") r.fail(p + "fmt", shown(*fmt) + " is not supported (e4m3)");
  if (const auto a = text("activation_scheme"); a && *a != "dynamic")
    r.fail(p + "activation_scheme", shown(*a) + " is not supported (dynamic)");
  if (const auto sf = text("scale_fmt")) {
    if (*sf != "ue8m0") r.fail(p + "scale_fmt", shown(*sf) + " is not supported (ue8m0, or absent)");
    q.ue8m0 = true;
  }
  if (!c.contains("weight_block_size")) r.fail(p + "weight_block_size", "missing");
  const json& b = c.at("weight_block_size");
  if (!b.is_array() || b.size() != 2 || !b[0].is_number_integer() || !b[1].is_number_integer())
    r.fail(p + "weight_block_size", "expected [rows, cols], got " + json_for_message(b));
  const auto rows = json_integer_in(b[0], 1, 1 << 20), cols = json_integer_in(b[1], 1, 1 << 20);
  if (rows != 128 || cols != 128)
    r.fail(p + "weight_block_size", "only [128, 128] blocks are supported, got " + json_for_message(b));
  q.block_rows = 128;
  q.block_cols = 128;
  q.fp8 = true;
  return q;
}

ModelSpec parse_model_spec(const std::string& json_text, const std::string& source) {
  const json j = parse_json_input(json_text, source);
  if (!j.is_object()) throw_bad_input(source, "expected a JSON object, got " + json_for_message(j));
  ConfigReader r(j, source);

  ModelSpec s;
  s.family = detect_family(j, r);
  s.model_type = family_name(s.family);
  const bool glm = s.family == Family::kGlmMoeDsa;

  if (!r.has("q_lora_rank"))
    r.fail("q_lora_rank", "missing or null: the DSA indexer needs the query latent (q_lora_rank)");
  s.vocab_size = r.get_int("vocab_size", glm ? 154880 : 129280, 1, lim::kMaxVocab);
  s.hidden_size = r.get_int("hidden_size", glm ? 6144 : 7168, 1, lim::kMaxHiddenSize);
  s.num_layers = r.get_int("num_hidden_layers", glm ? 78 : 61, 1, lim::kMaxLayers);
  s.num_heads = r.get_int("num_attention_heads", glm ? 64 : 128, 1, lim::kMaxHeads);
  int kv_heads = r.get_int("num_key_value_heads", s.num_heads, 1, lim::kMaxHeads);
  if (kv_heads != s.num_heads) r.fail("num_key_value_heads", "MLA needs num_key_value_heads == num_attention_heads");
  s.q_lora_rank = r.get_int("q_lora_rank", std::nullopt, 1, lim::kMaxLoraRank);
  s.kv_lora_rank = r.get_int("kv_lora_rank", 512, 1, lim::kMaxLoraRank);
  s.qk_nope_head_dim = r.get_int("qk_nope_head_dim", glm ? 192 : 128, 1, lim::kMaxHeadDim);
  s.qk_rope_head_dim = r.get_int("qk_rope_head_dim", 64, 1, lim::kMaxHeadDim);
  s.v_head_dim = r.get_int("v_head_dim", glm ? 256 : 128, 1, lim::kMaxHeadDim);
  s.intermediate_size = r.get_int("intermediate_size", glm ? 12288 : 18432, 1, lim::kMaxIntermediate);
  s.moe_intermediate_size = r.get_int("moe_intermediate_size", 2048, 1, lim::kMaxIntermediate);
  s.n_routed_experts = r.get_int("n_routed_experts", 256, 1, lim::kMaxExperts);
  if (r.has("num_experts")) s.n_routed_experts = r.get_int("num_experts", std::nullopt, 1, lim::kMaxExperts);
  s.n_shared_experts = r.get_int("n_shared_experts", 1, 0, lim::kMaxExperts);
  s.num_experts_per_tok = r.get_int("num_experts_per_tok", 8, 1, lim::kMaxExperts);
  s.n_group = r.get_int("n_group", glm ? 1 : 8, 1, lim::kMaxExperts);
  s.topk_group = r.get_int("topk_group", glm ? 1 : 4, 1, lim::kMaxExperts);
  s.norm_topk_prob = r.get_bool("norm_topk_prob", true);
  s.routed_scaling_factor = r.get_double("routed_scaling_factor", 2.5);
  s.rms_norm_eps = r.get_double("rms_norm_eps", glm ? 1e-5 : 1e-6);
  if (s.rms_norm_eps < 0 || s.rms_norm_eps > 1) r.fail("rms_norm_eps", "must be in [0, 1]");
  s.max_position_embeddings = r.get_int("max_position_embeddings", glm ? 202752 : 163840, 1, lim::kMaxPositions);
  s.tie_word_embeddings = r.get_bool("tie_word_embeddings", false);
  s.attention_bias = r.get_bool("attention_bias", false);
  s.index_n_heads = r.get_int("index_n_heads", glm ? 32 : 64, 1, lim::kMaxHeads);
  s.index_head_dim = r.get_int("index_head_dim", 128, 1, lim::kMaxHeadDim);
  s.index_topk = r.get_int("index_topk", 2048, 1, lim::kMaxIndexTopk);

  if (r.has("hidden_act")) {
    if (!j["hidden_act"].is_string() || j["hidden_act"] != "silu")
      r.fail("hidden_act", "only silu is supported, got " + json_for_message(j["hidden_act"]));
  }
  if (r.has("scoring_func")) {
    if (!j["scoring_func"].is_string() || j["scoring_func"] != "sigmoid")
      r.fail("scoring_func", "only sigmoid routing is supported, got " + json_for_message(j["scoring_func"]));
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
        r.fail("mlp_layer_types", "unknown entry " + json_for_message(e) + " (dense or sparse)");
    }
  } else {
    // Larger than the layer count: every layer dense (transformers: layer_idx >= first_k_dense_replace).
    int n_dense = std::min(r.get_int("first_k_dense_replace", 3, 0, lim::kMaxLayers), s.num_layers);
    for (int i = 0; i < s.num_layers; ++i) s.layer_is_moe.push_back(i >= n_dense);
  }

  s.quant = read_quant(j, r);
  s.num_mtp_layers = r.get_int("num_nextn_predict_layers", 0, 0, lim::kMaxMtpLayers);
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
  std::error_code ec;
  if (!std::filesystem::exists(std::filesystem::symlink_status(path, ec))) return ids;
  const json j = parse_json_input(read_regular_file(path), path);
  if (!j.is_object()) throw_bad_input(path, "expected a JSON object, got " + json_for_message(j));
  ConfigReader r(j, path);
  for (int64_t id : read_token_ids(j, r, "eos_token_id"))
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  return ids;
}

ModelSpec load_model_spec(const std::string& dir) {
  const std::string path = dir + "/config.json";
  return parse_model_spec(read_regular_file(path), path);
}

}  // namespace indexcache
