// config.json -> ModelSpec: defaults, family detection, rope variants, scales, and bad configs.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "indexcache/error.h"
#include "indexcache/model_spec.h"
#include "test_util.h"

namespace indexcache {
namespace {

using nlohmann::json;

json small_config(const std::string& type = "glm_moe_dsa") {
  return {{"model_type", type},      {"vocab_size", 256},        {"hidden_size", 64},
          {"num_hidden_layers", 4},  {"num_attention_heads", 4}, {"q_lora_rank", 32},
          {"kv_lora_rank", 32},      {"qk_nope_head_dim", 16},   {"qk_rope_head_dim", 8},
          {"v_head_dim", 16},        {"index_n_heads", 4},       {"index_head_dim", 32},
          {"index_topk", 8},         {"n_routed_experts", 8},    {"num_experts_per_tok", 2},
          {"n_group", 1},            {"topk_group", 1},          {"first_k_dense_replace", 1},
          {"intermediate_size", 96}, {"moe_intermediate_size", 32}};
}

ModelSpec parse(const json& j) { return parse_model_spec(j.dump(), "config.json"); }

// Parsing must fail with a bad-input error whose message contains every needle.
void expect_error(const json& j, const std::vector<std::string>& needles) {
  try {
    parse(j);
    FAIL() << "no error for " << j.dump();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

TEST(ModelSpec, ReadsSmallGlmConfig) {
  const ModelSpec s = parse(small_config());
  EXPECT_EQ(s.family, Family::kGlmMoeDsa);
  EXPECT_EQ(s.indexer_rope_layout(), RopeLayout::kInterleaved);
  EXPECT_EQ(s.qk_head_dim(), 24);
  EXPECT_EQ(s.layer_is_moe, (std::vector<bool>{false, true, true, true}));
  EXPECT_DOUBLE_EQ(s.rms_norm_eps, 1e-5);  // GLM default
  EXPECT_DOUBLE_EQ(s.attention_scale(), 1.0 / std::sqrt(24.0));
  EXPECT_DOUBLE_EQ(s.rope_attention_factor(), 1.0);
  EXPECT_DOUBLE_EQ(s.rope.theta, 10000.0);
}

TEST(ModelSpec, FamilyFromArchitectures) {
  json j = small_config();
  j.erase("model_type");
  j["architectures"] = {"DeepseekV32ForCausalLM"};
  const ModelSpec s = parse(j);
  EXPECT_EQ(s.family, Family::kDeepseekV32);
  EXPECT_EQ(s.indexer_rope_layout(), RopeLayout::kHalfSplit);
  EXPECT_DOUBLE_EQ(s.rms_norm_eps, 1e-6);
}

TEST(ModelSpec, MlpLayerTypesOverrideFirstKDense) {
  json j = small_config();
  j["mlp_layer_types"] = {"dense", "sparse", "dense", "sparse"};
  EXPECT_EQ(parse(j).layer_is_moe, (std::vector<bool>{false, true, false, true}));
  j["mlp_layer_types"] = {"dense", "sparse"};
  expect_error(j, {"mlp_layer_types", "4"});
  j["mlp_layer_types"] = {"dense", "sparse", "moe", "sparse"};
  expect_error(j, {"mlp_layer_types", "moe"});
}

// DeepSeek-V3.2's rope: YaRN factor 40, mscale = mscale_all_dim = 1 -> softmax scale
// 192^-0.5 * (0.1 ln 40 + 1)^2 = 0.1352338 (REFERENCE.md: about 0.13523), cos/sin factor exactly 1.
TEST(ModelSpec, DeepseekYarnScales) {
  json j = small_config("deepseek_v32");
  j["qk_nope_head_dim"] = 128;
  j["qk_rope_head_dim"] = 64;
  j["index_head_dim"] = 128;
  j["rope_theta"] = 10000;
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 40}, {"beta_fast", 32}, {"beta_slow", 1},
                       {"mscale", 1.0}, {"mscale_all_dim", 1.0}, {"original_max_position_embeddings", 4096}};
  const ModelSpec s = parse(j);
  EXPECT_EQ(s.rope.type, RopeType::kYarn);
  EXPECT_NEAR(s.attention_scale(), 0.1352338, 1e-6);
  EXPECT_DOUBLE_EQ(s.rope_attention_factor(), 1.0);
  EXPECT_DOUBLE_EQ(s.rope.original_max_position, 4096);
}

TEST(ModelSpec, Glm5ScaleAndRopeParameters) {
  json j = small_config();
  j["qk_nope_head_dim"] = 192;
  j["qk_rope_head_dim"] = 64;
  j["index_head_dim"] = 128;
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1000000.0}};
  const ModelSpec s = parse(j);
  EXPECT_DOUBLE_EQ(s.attention_scale(), 0.0625);
  EXPECT_DOUBLE_EQ(s.rope.theta, 1e6);
}

TEST(ModelSpec, YarnWithoutMscaleUsesFactorOnly) {
  json j = small_config();
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"rope_theta", 10000}};
  const ModelSpec s = parse(j);
  EXPECT_NEAR(s.rope_attention_factor(), 0.1 * std::log(4.0) + 1.0, 1e-12);
  EXPECT_DOUBLE_EQ(s.attention_scale(), 1.0 / std::sqrt(24.0));  // no mscale_all_dim
  EXPECT_DOUBLE_EQ(s.rope.original_max_position, s.max_position_embeddings);
}

TEST(ModelSpec, PlanKeysAreKept) {
  json j = small_config();
  j["index_topk_freq"] = 4;
  j["index_skip_topk_offset"] = 3;
  j["index_topk_pattern"] = "FSSS";
  const ModelSpec s = parse(j);
  EXPECT_EQ(s.plan_keys.index_topk_freq, 4);
  EXPECT_EQ(s.plan_keys.index_skip_topk_offset, 3);
  EXPECT_EQ(s.plan_keys.index_topk_pattern, "FSSS");
  EXPECT_FALSE(s.plan_keys.indexer_types.has_value());
}

TEST(ModelSpec, EosIdsIntOrList) {
  json j = small_config();
  j["eos_token_id"] = {1, 7};
  EXPECT_EQ(parse(j).eos_token_ids, (std::vector<int64_t>{1, 7}));
  j["eos_token_id"] = 3;
  EXPECT_EQ(parse(j).eos_token_ids, (std::vector<int64_t>{3}));
}

// Block-FP8 quantization_config as DeepSeek-V3.2 (scale_fmt ue8m0) and GLM-5-FP8 (no scale_fmt,
// a modules_to_not_convert that is not read) ship it; MTP layers counted, not added to the layers.
TEST(ModelSpec, BlockFp8AndMtp) {
  EXPECT_FALSE(parse(small_config()).quant.fp8);
  json j = small_config("deepseek_v32");
  j["quantization_config"] = {{"activation_scheme", "dynamic"}, {"fmt", "e4m3"}, {"quant_method", "fp8"},
                              {"scale_fmt", "ue8m0"}, {"weight_block_size", {128, 128}}};
  j["num_nextn_predict_layers"] = 1;
  ModelSpec s = parse(j);
  EXPECT_TRUE(s.quant.fp8);
  EXPECT_TRUE(s.quant.ue8m0);
  EXPECT_EQ(s.quant.block_rows, 128);
  EXPECT_EQ(s.quant.block_cols, 128);
  EXPECT_EQ(s.num_mtp_layers, 1);
  EXPECT_EQ(s.num_layers, 4);
  j = small_config();
  j["quantization_config"] = {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"weight_block_size", {128, 128}},
                              {"modules_to_not_convert", {"model.layers.0.self_attn.indexers_proj"}}};
  s = parse(j);
  EXPECT_TRUE(s.quant.fp8);
  EXPECT_FALSE(s.quant.ue8m0);
  EXPECT_EQ(s.num_mtp_layers, 0);
}

TEST(ModelSpec, BadQuantizationConfigs) {
  auto with = [](json q) {
    json j = small_config();
    j["quantization_config"] = std::move(q);
    return j;
  };
  const json ok = {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"weight_block_size", {128, 128}}};
  json q = ok;
  q["quant_method"] = "awq";
  expect_error(with(q), {"quantization_config.quant_method", "awq"});
  q = ok;
  q.erase("quant_method");
  expect_error(with(q), {"quantization_config.quant_method", "missing"});
  q = ok;
  q["fmt"] = "e5m2";
  expect_error(with(q), {"quantization_config.fmt", "e5m2"});
  q = ok;
  q["scale_fmt"] = "e8m0fnu";
  expect_error(with(q), {"quantization_config.scale_fmt", "e8m0fnu"});
  q = ok;
  q["activation_scheme"] = "static";
  expect_error(with(q), {"quantization_config.activation_scheme", "static"});
  q = ok;
  q["weight_block_size"] = {64, 64};
  expect_error(with(q), {"quantization_config.weight_block_size", "[128, 128]"});
  q = ok;
  q["weight_block_size"] = 128;
  expect_error(with(q), {"quantization_config.weight_block_size", "[rows, cols]"});
  expect_error(with("fp8"), {"quantization_config", "object"});
  json j = small_config();
  j["num_nextn_predict_layers"] = -1;
  expect_error(j, {"num_nextn_predict_layers"});
}

TEST(ModelSpec, BadConfigs) {
  expect_error(json::array({1, 2}), {"config.json", "object"});
  try {
    parse_model_spec("{\"model_type\": ", "dir/config.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dir/config.json: invalid JSON"), std::string::npos);
  }
  json j = small_config();
  j.erase("q_lora_rank");
  expect_error(j, {"q_lora_rank", "query latent"});
  j = small_config();
  j["q_lora_rank"] = nullptr;
  expect_error(j, {"q_lora_rank"});
  j = small_config("llama");
  expect_error(j, {"model_type", "llama"});
  j = small_config();
  j["hidden_size"] = "64";
  expect_error(j, {"hidden_size", "integer"});
  j = small_config();
  j["hidden_size"] = -3;
  expect_error(j, {"hidden_size", "range"});
  j = small_config();
  j["rope_parameters"] = {{"rope_type", "longrope"}};
  expect_error(j, {"rope_type", "longrope"});
  j = small_config();
  j["rope_parameters"] = {{"rope_type", "yarn"}};
  expect_error(j, {"factor"});
  j = small_config();
  j["qk_rope_head_dim"] = 7;
  expect_error(j, {"qk_rope_head_dim", "even"});
  j = small_config();
  j["index_head_dim"] = 4;
  expect_error(j, {"index_head_dim"});
  j = small_config();
  j["n_group"] = 3;
  expect_error(j, {"n_group"});
  j = small_config();
  j["hidden_act"] = "gelu";
  expect_error(j, {"hidden_act", "gelu"});
  j = small_config();
  j["num_key_value_heads"] = 2;
  expect_error(j, {"num_key_value_heads"});
  j = small_config();
  j["indexer_types"] = "FFFF";
  expect_error(j, {"indexer_types"});
}

}  // namespace
}  // namespace indexcache

namespace indexcache {
namespace {

TEST(ModelSpec, EosIdsFromConfigAndGenerationConfig) {
  const std::string dir = test::make_temp_dir("eos");
  json j = small_config();
  j["eos_token_id"] = 1;
  test::write_file(dir + "/config.json", j.dump());
  const ModelSpec s = load_model_spec(dir);
  EXPECT_EQ(load_eos_ids(dir, s), (std::vector<int64_t>{1}));
  test::write_file(dir + "/generation_config.json", R"({"eos_token_id": [1, 5, 9]})");
  EXPECT_EQ(load_eos_ids(dir, s), (std::vector<int64_t>{1, 5, 9}));
  test::write_file(dir + "/generation_config.json", "{broken");
  EXPECT_THROW(load_eos_ids(dir, s), Error);
}

}  // namespace
}  // namespace indexcache
