// The checkpoint schema (src/io/checkpoint_schema.h) against real checkpoints: its names and shapes
// are exactly the tensors of models/dsa-mini and of every golden model, its parameter count is the
// sum of their sizes. Checkpoints written from the schema (both expert layouts, attention biases,
// tied embeddings, S layers without indexer tensors) load back bit for bit; Model::synthetic gives
// bf16 weights with the init scales and finite logits, deterministic in the seed whatever the
// thread count.
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <omp.h>
#include <random>
#include <span>

#include "backend/backend.h"
#include "bench/presets.h"
#include "golden_fixture.h"
#include "indexcache/dtype.h"
#include "indexcache/error.h"
#include "indexcache/model.h"
#include "indexcache/safetensors.h"
#include "indexcache/session.h"
#include "indexcache/weight_store.h"
#include "io/checkpoint_schema.h"
#include "model/weights.h"
#include "test_util.h"

namespace indexcache {
namespace {

// The f32 data of a bound host tensor (the files these tests write are f32); nullptr for an absent
// one or another dtype.
const float* f32_data(WeightRef r) {
  return r && r.dtype == DType::kF32 ? static_cast<const float*>(r.data) : nullptr;
}

// The bf16 data of a bound host tensor (random weights); nullptr for an absent one or another dtype.
const uint16_t* bf16_data(WeightRef r) {
  return r && r.dtype == DType::kBF16 ? static_cast<const uint16_t*>(r.data) : nullptr;
}

// The `n` elements of a host tensor as f32.
std::vector<float> as_f32(WeightRef r, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  convert_to_f32(r.dtype, r.data, v.size(), v.data());
  return v;
}

using nlohmann::json;

const std::string kMini = std::string(INDEXCACHE_TEST_DATA) + "/../../models/dsa-mini";

std::vector<std::string> real_models() {
  std::vector<std::string> v = test::golden_model_dirs();
  v.insert(v.begin(), kMini);
  return v;
}

std::string model_name(const std::string& dir) { return std::filesystem::path(dir).filename().string(); }

int first_moe_layer(const ModelSpec& s) {
  for (int l = 0; l < s.num_layers; ++l)
    if (s.layer_is_moe[l]) return l;
  return -1;
}

ExpertLayout layout_of(const WeightStore& store, const ModelSpec& s) {
  const int l = first_moe_layer(s);
  return l >= 0 && store.has(packed_experts_name(l)) ? ExpertLayout::kPacked : ExpertLayout::kPerExpert;
}

class RealCheckpoint : public ::testing::TestWithParam<std::string> {};

// Every tensor the schema lists is in the file with that shape, and the file holds nothing else.
TEST_P(RealCheckpoint, SchemaIsExactlyTheFilesTensors) {
  const ModelSpec s = load_model_spec(GetParam());
  const WeightStore store = WeightStore::open_dir(GetParam());
  SchemaOptions o;
  o.experts = layout_of(store, s);
  std::map<std::string, std::vector<int64_t>> schema;
  for (const TensorSpec& t : checkpoint_tensors(s, o)) {
    EXPECT_TRUE(schema.emplace(t.name, t.shape).second) << "listed twice: " << t.name;
    EXPECT_FALSE(t.optional) << t.name;
  }
  std::map<std::string, std::vector<int64_t>> file;
  for (const std::string& name : store.names()) file.emplace(name, store.find(name).info->shape);
  for (const auto& [name, shape] : schema) {
    auto it = file.find(name);
    ASSERT_NE(it, file.end()) << name << " is in the schema, not in the checkpoint";
    EXPECT_EQ(it->second, shape) << name;
  }
  for (const auto& [name, shape] : file) EXPECT_TRUE(schema.count(name)) << name << " is in the checkpoint only";
  EXPECT_EQ(schema.size(), file.size());
}

// Model::parameter_count (and the bench's count) is the sum of the checkpoint's tensor sizes; the
// indexer share is the sum of its indexer tensors.
TEST_P(RealCheckpoint, ParameterCountIsTheFilesSum) {
  const WeightStore store = WeightStore::open_dir(GetParam());
  int64_t all = 0, indexer = 0;
  for (const std::string& name : store.names()) {
    const int64_t n = store.find(name).info->numel();
    all += n;
    if (name.find(".self_attn.indexer.") != std::string::npos) indexer += n;
  }
  auto model = Model::load(GetParam());
  EXPECT_EQ(model->parameter_count(), all);
  EXPECT_EQ(model->indexer_parameter_count(), indexer);
  EXPECT_EQ(bench::parameter_count(model->spec()), all);
  EXPECT_EQ(bench::indexer_parameter_count(model->spec()), indexer);
}

INSTANTIATE_TEST_SUITE_P(Models, RealCheckpoint, ::testing::ValuesIn(real_models()),
                         [](const auto& info) {
                           std::string n = model_name(info.param);
                           for (char& c : n)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });

// Both expert layouts appear among the real checkpoints, so the test above covers both forms.
TEST(CheckpointSchema, RealCheckpointsHaveBothExpertLayouts) {
  int packed = 0, per_expert = 0;
  for (const std::string& dir : real_models()) {
    const ModelSpec s = load_model_spec(dir);
    (layout_of(WeightStore::open_dir(dir), s) == ExpertLayout::kPacked ? packed : per_expert)++;
  }
  EXPECT_GE(packed, 1);
  EXPECT_GE(per_expert, 1);
}

// The tiny bench preset's config with attention biases, tied embeddings and an FSFS plan.
json odd_config() {
  json j = json::parse(bench::make_preset("tiny").config_json);
  j["attention_bias"] = true;
  j["tie_word_embeddings"] = true;
  j["indexer_types"] = {"full", "shared", "full", "shared"};
  return j;
}

TEST(CheckpointSchema, ConditionalTensors) {
  const json j = odd_config();
  ModelSpec s = parse_model_spec(j.dump(), "config.json");
  auto names = [](const ModelSpec& spec, const SchemaOptions& o) {
    std::map<std::string, TensorSpec> m;
    for (const TensorSpec& t : checkpoint_tensors(spec, o)) m.emplace(t.name, t);
    return m;
  };
  auto m = names(s, {});
  EXPECT_FALSE(m.count("lm_head.weight"));
  ASSERT_TRUE(m.count("model.layers.2.self_attn.o_proj.bias"));
  EXPECT_EQ(m.at("model.layers.2.self_attn.o_proj.bias").role, TensorRole::kAttentionBias);
  EXPECT_EQ(m.at("model.layers.1.self_attn.kv_a_proj_with_mqa.bias").shape,
            (std::vector<int64_t>{s.kv_lora_rank + s.qk_rope_head_dim}));
  // Layer 0 is dense: no router or experts; layer 1 packs its experts unless asked otherwise.
  EXPECT_TRUE(m.count("model.layers.0.mlp.gate_proj.weight"));
  EXPECT_FALSE(m.count("model.layers.0.mlp.gate.weight"));
  EXPECT_EQ(m.at(packed_experts_name(1)).shape,
            (std::vector<int64_t>{s.n_routed_experts, 2 * s.moe_intermediate_size, s.hidden_size}));
  SchemaOptions per;
  per.experts = ExpertLayout::kPerExpert;
  per.indexers = {IndexerTensors::kRequired, IndexerTensors::kOptional, IndexerTensors::kRequired,
                  IndexerTensors::kOmitted};
  auto q = names(s, per);
  EXPECT_FALSE(q.count(packed_experts_name(1)));
  const std::string last = "model.layers.1.mlp.experts." + std::to_string(s.n_routed_experts - 1) + ".down_proj.weight";
  ASSERT_TRUE(q.count(last));
  EXPECT_EQ(q.at(last).expert, s.n_routed_experts - 1);
  EXPECT_EQ(q.at(last).role, TensorRole::kRoutedExpert);
  EXPECT_TRUE(q.at("model.layers.1.self_attn.indexer.wk.weight").optional);
  EXPECT_FALSE(q.at("model.layers.2.self_attn.indexer.wk.weight").optional);
  EXPECT_FALSE(q.count("model.layers.3.self_attn.indexer.wk.weight"));
  // The two expert layouts hold the same parameters.
  int64_t a = 0, b = 0;
  for (const auto& [n, t] : m) a += t.numel();
  SchemaOptions per_expert;
  per_expert.experts = ExpertLayout::kPerExpert;
  for (const TensorSpec& t : checkpoint_tensors(s, per_expert)) b += t.numel();
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, schema_parameter_count(s));
  s.tie_word_embeddings = false;
  EXPECT_EQ(schema_parameter_count(s), a + int64_t{s.vocab_size} * s.hidden_size);
}

// Writes `dir`/config.json and `dir`/model.safetensors: the schema's tensors under `o`, each from
// `values` (a WeightRef: its data in its dtype, or a float pointer: f32).
template <class Values>
void write_checkpoint(const std::string& dir, const json& config, const ModelSpec& s, const SchemaOptions& o,
                      Values&& values) {
  test::write_file(dir + "/config.json", config.dump(2));
  std::vector<TensorSpec> ts = checkpoint_tensors(s, o);
  std::vector<TensorToWrite> w;
  for (const TensorSpec& t : ts) {
    const WeightRef p = values(t);
    w.push_back({t.name, p.dtype, t.shape,
                 std::span<const std::byte>(static_cast<const std::byte*>(p.data),
                                            static_cast<size_t>(t.numel()) * dtype_size(p.dtype))});
  }
  write_safetensors(dir + "/model.safetensors", w);
}

SchemaOptions fsfs_options(ExpertLayout layout) {
  SchemaOptions o;
  o.experts = layout;
  o.indexers = {IndexerTensors::kRequired, IndexerTensors::kOmitted, IndexerTensors::kRequired,
                IndexerTensors::kOmitted};
  return o;
}

// A checkpoint written from a synthetic model's (bf16) weights, in either expert layout, without the
// S layers' indexers, loads back with exactly those weights (bf16, mapped in place; uk_t bf16 too)
// and runs to exactly the same logits.
TEST(CheckpointSchema, SyntheticWeightsRoundTripThroughAFile) {
  const json j = odd_config();
  const ModelSpec s = parse_model_spec(j.dump(), "config.json");
  auto syn = Model::synthetic(s, 5);
  const IndexPlan plan = syn->config_plan();
  ASSERT_EQ(plan.pattern(), "FSFS");
  std::vector<int32_t> ids(23);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 37 + 11) % s.vocab_size);
  auto be = make_cpu_backend();
  const PrefillResult want = prefill(*syn, plan, ids, *be);
  for (ExpertLayout layout : {ExpertLayout::kPacked, ExpertLayout::kPerExpert}) {
    const std::string dir = test::make_temp_dir("schema-roundtrip");
    const SchemaOptions o = fsfs_options(layout);
    write_checkpoint(dir, j, s, o, [&](const TensorSpec& t) { return bound_tensor(syn->weights(), t); });
    auto loaded = Model::load(dir);
    EXPECT_TRUE(loaded->has_indexer(0));
    EXPECT_FALSE(loaded->has_indexer(1));
    EXPECT_TRUE(loaded->has_indexer(2));
    EXPECT_FALSE(loaded->has_indexer(3));
    EXPECT_THROW(loaded->check_plan(IndexPlan::full(s.num_layers)), Error);
    EXPECT_EQ(loaded->weights().lm_head, loaded->weights().embed);  // tied
    for (const TensorSpec& t : checkpoint_tensors(s, o)) {
      const uint16_t* a = bf16_data(bound_tensor(loaded->weights(), t));
      const uint16_t* b = bf16_data(bound_tensor(syn->weights(), t));
      ASSERT_TRUE(a && b) << t.name;
      EXPECT_EQ(std::memcmp(a, b, static_cast<size_t>(t.numel()) * sizeof(uint16_t)), 0) << t.name;
    }
    const int64_t uk = int64_t{s.num_heads} * s.kv_lora_rank * s.qk_nope_head_dim;
    for (int l = 0; l < s.num_layers; ++l) {
      const WeightRef a = loaded->weights().layers[l].uk_t, b = syn->weights().layers[l].uk_t;
      ASSERT_TRUE(bf16_data(a) && bf16_data(b)) << l;
      EXPECT_EQ(std::memcmp(a.data, b.data, static_cast<size_t>(uk) * sizeof(uint16_t)), 0) << l;
    }
    // A backend of its own: placements are cached by host address, and this file's mapping may
    // reuse the last one's addresses (its bf16 tensors are converted, not viewed, on the CPU).
    const PrefillResult got = prefill(*loaded, plan, ids, *make_cpu_backend());
    ASSERT_EQ(got.logits.size(), want.logits.size());
    EXPECT_EQ(std::memcmp(got.logits.data(), want.logits.data(), got.logits.size() * sizeof(float)), 0);
    EXPECT_EQ(got.topk, want.topk);
  }
}

// Every tensor of a file lands where the forward pass reads it: with a different value range per
// tensor, each schema tensor's bound pointer holds exactly its own values (biases and the per-head
// split of kv_b included).
TEST(CheckpointSchema, LoaderPutsEachTensorInItsSlot) {
  const json j = odd_config();
  const ModelSpec s = parse_model_spec(j.dump(), "config.json");
  for (ExpertLayout layout : {ExpertLayout::kPacked, ExpertLayout::kPerExpert}) {
    const SchemaOptions o = fsfs_options(layout);
    std::map<std::string, std::vector<float>> values;
    float base = 0;
    for (const TensorSpec& t : checkpoint_tensors(s, o)) {
      auto& v = values[t.name];
      v.resize(static_cast<size_t>(t.numel()));
      for (size_t i = 0; i < v.size(); ++i) v[i] = base + 1e-3f * static_cast<float>(i % 997);
      base += 1;
    }
    const std::string dir = test::make_temp_dir("schema-slots");
    write_checkpoint(dir, j, s, o, [&](const TensorSpec& t) { return values.at(t.name).data(); });
    auto loaded = Model::load(dir);
    const ModelWeights& w = loaded->weights();
    for (const TensorSpec& t : checkpoint_tensors(s, o)) {
      const float* p = f32_data(bound_tensor(w, t));
      ASSERT_NE(p, nullptr) << t.name;
      EXPECT_EQ(std::memcmp(p, values.at(t.name).data(), static_cast<size_t>(t.numel()) * sizeof(float)), 0)
          << t.name;
    }
    // Each routed expert's gate / up / down views, and kv_b's transposed key rows.
    const int64_t H = s.hidden_size, I = s.moe_intermediate_size, E = s.n_routed_experts;
    for (int l = 0; l < s.num_layers; ++l) {
      const LayerWeights& lw = w.layers[l];
      ASSERT_EQ(static_cast<int64_t>(lw.experts.size()), lw.moe ? E : 0);
      for (int64_t e = 0; e < static_cast<int64_t>(lw.experts.size()); ++e) {
        const std::string m = "model.layers." + std::to_string(l) + ".mlp.experts.";
        const float *gate, *up, *down;
        if (layout == ExpertLayout::kPacked) {
          gate = values.at(m + "gate_up_proj").data() + e * 2 * I * H;
          up = gate + I * H;
          down = values.at(m + "down_proj").data() + e * H * I;
        } else {
          gate = values.at(m + std::to_string(e) + ".gate_proj.weight").data();
          up = values.at(m + std::to_string(e) + ".up_proj.weight").data();
          down = values.at(m + std::to_string(e) + ".down_proj.weight").data();
        }
        EXPECT_EQ(std::memcmp(f32_data(lw.experts[e].gate), gate, I * H * sizeof(float)), 0) << l << " " << e;
        EXPECT_EQ(std::memcmp(f32_data(lw.experts[e].up), up, I * H * sizeof(float)), 0) << l << " " << e;
        EXPECT_EQ(std::memcmp(f32_data(lw.experts[e].down), down, I * H * sizeof(float)), 0) << l << " " << e;
      }
      const int64_t nope = s.qk_nope_head_dim, vd = s.v_head_dim, kvlr = s.kv_lora_rank;
      for (int64_t h = 0; h < s.num_heads; ++h)
        for (int64_t i = 0; i < nope; ++i)
          for (int64_t c = 0; c < kvlr; ++c)
            ASSERT_EQ(lw.uk_t.at((h * kvlr + c) * nope + i), lw.kv_b.at((h * (nope + vd) + i) * kvlr + c));
    }
  }
}

// The generator's scales: norms exactly 1, biases 0, projections uniform on [-std*sqrt(3),
// std*sqrt(3)) with std 1/sqrt(fan_in) (residual outputs shrunk by 1/sqrt(2 layers)), stored as
// bf16 (2 bytes a parameter, uk_t in bf16 too).
TEST(CheckpointSchema, SyntheticWeightsFollowTheInitScales) {
  const ModelSpec s = bench::make_preset("tiny").spec;
  auto m = Model::synthetic(s, 3);
  for (const TensorSpec& t : checkpoint_tensors(s)) {
    const WeightRef r = bound_tensor(m->weights(), t);
    ASSERT_NE(bf16_data(r), nullptr) << t.name;
    const int64_t n = t.numel();
    const std::vector<float> p = as_f32(r, n);
    if (t.init.std == 0) {
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(p[i], t.init.fill) << t.name;
      continue;
    }
    const double a = t.init.std * std::sqrt(3.0);
    const float bound = bf16_to_f32(f32_to_bf16(static_cast<float>(a)));  // a, rounded to bf16
    double sum = 0, sq = 0, max_abs = 0;
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_LE(std::abs(p[i]), bound) << t.name << " " << i;
      sum += p[i];
      sq += double{p[i]} * p[i];
      max_abs = std::max(max_abs, double{std::abs(p[i])});
    }
    if (n < 4096) continue;
    const double mean = sum / n, sd = std::sqrt(sq / n - mean * mean);
    EXPECT_NEAR(sd / t.init.std, 1.0, 0.05) << t.name;
    EXPECT_NEAR(mean / t.init.std, 0.0, 0.05) << t.name;
    EXPECT_GT(max_abs, 0.98 * a) << t.name;  // the whole range is used
  }
  const double res = 1.0 / std::sqrt(2.0 * s.num_layers);
  for (const TensorSpec& t : checkpoint_tensors(s)) {
    if (t.name == "model.layers.1.self_attn.o_proj.weight") {
      EXPECT_DOUBLE_EQ(t.init.std, res / std::sqrt(double(s.num_heads * s.v_head_dim)));
    } else if (t.name == "model.layers.1.self_attn.q_b_proj.weight") {
      EXPECT_DOUBLE_EQ(t.init.std, 1.0 / std::sqrt(double(s.q_lora_rank)));
    } else if (t.name == "model.embed_tokens.weight") {
      EXPECT_DOUBLE_EQ(t.init.std, 1.0);
    }
  }
  const int64_t uk = int64_t{s.num_heads} * s.kv_lora_rank * s.qk_nope_head_dim;
  for (const LayerWeights& lw : m->weights().layers) {
    EXPECT_EQ(lw.uk_t.dtype, DType::kBF16);
    EXPECT_EQ(lw.kv_b.dtype, DType::kBF16);
  }
  EXPECT_EQ(m->weights().owned_bytes(),
            static_cast<size_t>(2 * (bench::parameter_count(s) + s.num_layers * uk)));
}

// The weights are a function of the seed alone: the same bytes for the same seed on 1 or 3
// threads, others for another seed; tensors of one shape get different values.
TEST(CheckpointSchema, SyntheticWeightsDependOnlyOnTheSeed) {
  const ModelSpec s = bench::make_preset("tiny").spec;
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  auto a = Model::synthetic(s, 7);
  omp_set_num_threads(3);
  auto b = Model::synthetic(s, 7), c = Model::synthetic(s, 8);
  omp_set_num_threads(threads);
  int random = 0;
  for (const TensorSpec& t : checkpoint_tensors(s)) {
    const size_t bytes = static_cast<size_t>(t.numel()) * sizeof(uint16_t);
    const uint16_t *pa = bf16_data(bound_tensor(a->weights(), t)), *pb = bf16_data(bound_tensor(b->weights(), t)),
                   *pc = bf16_data(bound_tensor(c->weights(), t));
    ASSERT_TRUE(pa && pb && pc) << t.name;
    EXPECT_EQ(std::memcmp(pa, pb, bytes), 0) << t.name;
    if (t.init.std > 0 && t.numel() > 16) {
      EXPECT_NE(std::memcmp(pa, pc, bytes), 0) << t.name;
      ++random;
    }
  }
  EXPECT_GT(random, 10);
  const int64_t uk = int64_t{s.num_heads} * s.kv_lora_rank * s.qk_nope_head_dim;
  for (int l = 0; l < s.num_layers; ++l)
    EXPECT_EQ(std::memcmp(a->weights().layers[l].uk_t.data, b->weights().layers[l].uk_t.data,
                          static_cast<size_t>(uk) * sizeof(uint16_t)),
              0)
        << l;
  // Tensors of one shape (q_a of two layers) get different values.
  const LayerWeights &l0 = a->weights().layers[0], &l1 = a->weights().layers[1];
  const size_t qa = static_cast<size_t>(s.q_lora_rank) * s.hidden_size * sizeof(uint16_t);
  EXPECT_NE(std::memcmp(l0.q_a.data, l1.q_a.data, qa), 0);
}

// Random weights run through a Session to finite logits, the same for the same seed and different
// for another.
TEST(CheckpointSchema, SyntheticModelIsFiniteAndDeterministic) {
  const ModelSpec s = bench::make_preset("tiny").spec;
  auto a = Model::synthetic(s, 11), b = Model::synthetic(s, 11), c = Model::synthetic(s, 12);
  EXPECT_EQ(a->parameter_count(), bench::parameter_count(s));
  EXPECT_TRUE(a->dir().empty());
  std::vector<int32_t> ids(80);
  std::mt19937 rng(1);
  for (auto& v : ids) v = static_cast<int32_t>(rng() % s.vocab_size);
  auto be = make_cpu_backend();
  for (const char* plan_text : {"full", "1/2"}) {
    const IndexPlan plan = IndexPlan::parse(plan_text, s);
    a->check_plan(plan);
    Session sa(*a, plan, *be), sb(*b, plan, *be), sc(*c, plan, *be);
    LayerCapture ca({.selections = true}), cb({.selections = true}), cc({.selections = true});
    ForwardOptions fa, fb, fc;
    fa.observer = &ca;
    fb.observer = &cb;
    fc.observer = &cc;
    const ChunkResult ra = sa.forward(ids, fa), rb = sb.forward(ids, fb), rc = sc.forward(ids, fc);
    ASSERT_EQ(ra.logits.size(), ids.size() * static_cast<size_t>(s.vocab_size));
    double sq = 0;
    for (float v : ra.logits) {
      ASSERT_TRUE(std::isfinite(v));
      sq += double{v} * v;
    }
    EXPECT_GT(sq, 0);
    EXPECT_EQ(std::memcmp(ra.logits.data(), rb.logits.data(), ra.logits.size() * sizeof(float)), 0) << plan_text;
    EXPECT_EQ(ca.selections, cb.selections);
    EXPECT_NE(std::memcmp(ra.logits.data(), rc.logits.data(), ra.logits.size() * sizeof(float)), 0) << plan_text;
  }
}

}  // namespace
}  // namespace indexcache
