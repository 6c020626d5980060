// memory_plan (include/indexcache/memory_plan.h) and `info --config-only` on the configs of the
// shipped DSA models (tests/data/configs): parameter counts against a hand calculation from the
// config's shapes and against the published totals, the FP8 bytes against GLM-5.2-FP8's published
// size, KV bytes per token, and the tokens that fit.
#include "indexcache/memory_plan.h"

#include <gtest/gtest.h>

#include <cmath>

#include "indexcache/error.h"
#include "indexcache/model_spec.h"
#include "test_util.h"

namespace indexcache {
namespace {

const std::string kConfigs = test::test_data_dir() + "/configs/";

// Parameters of the main layers and globals, from the shapes alone (REFERENCE.md section 4).
int64_t hand_parameters(const ModelSpec& s, int indexer_layers) {
  const int64_t H = s.hidden_size, qr = s.q_lora_rank, kr = s.kv_lora_rank, h = s.num_heads;
  const int64_t nope = s.qk_nope_head_dim, rope = s.qk_rope_head_dim, v = s.v_head_dim;
  const int64_t attention = H * qr + qr + qr * h * (nope + rope) + H * (kr + rope) + kr + kr * h * (nope + v) + h * v * H;
  const int64_t norms = 2 * H;
  const int64_t ih = s.index_n_heads, id = s.index_head_dim;
  const int64_t indexer = qr * ih * id + H * id + 2 * id + H * ih;
  const int64_t E = s.n_routed_experts, Im = s.moe_intermediate_size;
  const int64_t moe = E * 3 * H * Im + s.n_shared_experts * 3 * H * Im + E * H + E;
  const int64_t dense = 3 * H * s.intermediate_size;
  int64_t n = 2 * int64_t{s.vocab_size} * H + H;  // embeddings, lm_head, final norm
  for (int l = 0; l < s.num_layers; ++l) n += attention + norms + (s.layer_is_moe[l] ? moe : dense);
  return n + indexer * indexer_layers;
}

// The config's own plan both ships the indexers and sizes the cache.
MemoryPlan plan_of(const ModelSpec& s, int element_bytes = 2, int64_t device_bytes = 0, int devices = 1) {
  const IndexPlan shipped = IndexPlan::from_config(s);
  return memory_plan(s, {.shipped_indexers = shipped, .plan = shipped, .element_bytes = element_bytes, .ctx = 0,
                         .devices = devices, .device_bytes = device_bytes, .reserve_bytes = 0});
}

TEST(MemoryPlan, ParametersMatchTheHandCountAndThePublishedTotals) {
  struct Case {
    const char* name;
    int indexer_layers;
    double published;  // parameters of the main model, as its makers state them
  } cases[] = {{"glm5", 78, 744e9}, {"glm52", 21, 744e9}, {"dsv32", 61, 671e9}, {"paper30b", 47, 30e9}};
  for (const Case& c : cases) {
    const ModelSpec s = load_model_spec(kConfigs + c.name);
    const MemoryPlan p = plan_of(s);
    EXPECT_EQ(p.parameters, hand_parameters(s, c.indexer_layers)) << c.name;
    EXPECT_LT(std::abs(p.parameters / c.published - 1), 0.01) << c.name << ": " << p.parameters;
  }
}

// GLM-5.2-FP8 ships 755.6 GB in 141 shards (main layers, the MTP layer, scales): the stored bytes
// with the FP8 rule (linear weights e4m3 + an f32 scale per 128 x 128 block, the rest bf16) give it.
TEST(MemoryPlan, Fp8StoredBytesMatchGlm52Fp8) {
  const ModelSpec s = load_model_spec(kConfigs + "glm52");
  ASSERT_TRUE(s.quant.fp8);
  const MemoryPlan p = plan_of(s);
  const double total = static_cast<double>(p.stored_bytes + p.mtp_stored_bytes);
  EXPECT_LT(std::abs(total / 755.6e9 - 1), 0.002) << total;
  ASSERT_EQ(p.stored.size(), 3u);
  int64_t e4m3 = 0;
  for (const StoredDtype& d : p.stored)
    if (d.dtype == "F8_E4M3") e4m3 = d.bytes;
  EXPECT_GT(static_cast<double>(e4m3), 0.98 * p.stored_bytes);  // nearly everything is FP8 ...
  EXPECT_GT(p.mtp_parameters, 9e9);  // ... and the MTP layer is one MoE layer more
  EXPECT_LT(p.mtp_parameters, 11e9);
}

TEST(MemoryPlan, KvBytesPerTokenByHand) {
  const ModelSpec s = load_model_spec(kConfigs + "glm52");
  const MemoryPlan p = plan_of(s);
  // bf16: (kv_lora 512 + rope 64) * 2 B per layer, indexer keys 128 * 2 B on the 21 F layers.
  EXPECT_EQ(p.kv_plan.bytes_per_token(), 1152 * 78 + 256 * 21);
  EXPECT_EQ(p.kv_full.bytes_per_token(), 1152 * 78 + 256 * 78);
  const MemoryPlan f32 = plan_of(s, 4);
  EXPECT_EQ(f32.kv_plan.bytes_per_token(), 2 * (1152 * 78 + 256 * 21));
  EXPECT_EQ(f32.placed_bytes, 4 * f32.parameters);
}

TEST(MemoryPlan, TokensThatFit) {
  const ModelSpec s = load_model_spec(kConfigs + "paper30b");
  const int64_t gpu = int64_t{139} << 30;
  const MemoryPlan p = plan_of(s, 2, gpu);
  ASSERT_TRUE(p.fit);
  EXPECT_FALSE(p.fit_stored);  // a bf16 checkpoint: one weight path
  const int64_t weights = 2 * hand_parameters(s, 47);
  const int64_t per_token = 1152 * 47 + 256 * 47;
  EXPECT_TRUE(p.fit->fits);
  EXPECT_EQ(p.fit->free_bytes, gpu - weights);
  EXPECT_EQ(p.fit->tokens_full, (gpu - weights) / per_token);
  EXPECT_EQ(p.fit->sequences_full, (gpu - weights) / per_token / s.max_position_embeddings);
  // GLM-5 in bf16 does not fit 8 such GPUs; its FP8 weights do.
  const ModelSpec g = load_model_spec(kConfigs + "glm5");
  const MemoryPlan q = plan_of(g, 2, gpu, 8);
  ASSERT_TRUE(q.fit && q.fit_stored);
  EXPECT_FALSE(q.fit->fits);
  EXPECT_LT(q.fit->free_bytes, 0);
  EXPECT_EQ(q.fit->tokens_plan, 0);
  EXPECT_TRUE(q.fit_stored->fits);
  EXPECT_EQ(q.fit_stored->free_bytes, 8 * gpu - q.stored_bytes);
}

TEST(MemoryPlan, BadOptionsAreBadInput) {
  const ModelSpec s = load_model_spec(kConfigs + "paper30b");
  MemoryPlanOptions o{.shipped_indexers = IndexPlan::full(47), .plan = IndexPlan::full(47)};
  o.devices = 0;
  EXPECT_THROW(memory_plan(s, o), Error);
  o.devices = 1;
  o.plan = IndexPlan::full(12);
  EXPECT_THROW(memory_plan(s, o), Error);
}

TEST(InfoCli, ConfigOnlyPrintsTheMemoryPlan) {
  auto r = test::run_cli("info --config-only -m " + kConfigs + "glm52 --gpu-memory 139 --gpus 8 --ctx 200000");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* want : {"no weights read", "ships indexers in 21 layers", "plan : 95232 B/token", "all F: 109824 B/token",
                           "does not fit 8 x 139.0 GiB", "fit (fp8)    fits 8 x 139.0 GiB", "F8_E4M3", "MTP 1 layer(s)"})
    EXPECT_NE(r.output.find(want), std::string::npos) << want << "\n" << r.output;
  // A directory with nothing but config.json is enough; the plan flag is honoured.
  r = test::run_cli("info --config-only -m " + kConfigs + "dsv32 --plan 1/4 --gpu-memory 139 --gpus 8");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("(16 F / 61 layers)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("tokens under the plan"), std::string::npos) << r.output;
}

TEST(InfoCli, MemoryPlanFlagsNeedConfigOnlyAndRanges) {
  struct Case {
    std::string args, message;
  } cases[] = {
      {"info --ctx 1000", "--config-only"},
      {"info --gpus 4", "--config-only"},
      {"info --config-only -m " + kConfigs + "glm5 --gpus 0", "--gpus"},
      {"info --config-only -m " + kConfigs + "glm5 --gpu-memory -3", "--gpu-memory"},
      {"info --config-only -m " + kConfigs + "glm5 --ctx 0", "--ctx"},
      {"info --config-only -m " + kConfigs + "glm5 --plan FSF", "plan"},
  };
  for (const Case& c : cases) {
    const auto r = test::run_cli(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.output;
    EXPECT_EQ(r.output.rfind("error: ", 0), 0u) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << c.args << "\n" << r.output;
  }
}

}  // namespace
}  // namespace indexcache
