// Chunked prefill and decode against one-pass prefill, on every golden model and plan: the same
// logits and the same selections whatever the chunking (C = 1, C not dividing T, C << T), and
// decode logits at step t equal to the prefill logits at position t.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <set>

#include "backend/backend.h"
#include "golden_fixture.h"
#include "indexcache/model.h"
#include "indexcache/safetensors.h"
#include "indexcache/session.h"
#include "indexcache/error.h"
#include "model/placed_weights.h"

namespace indexcache {
namespace {

std::vector<int32_t> golden_ids(const test::GoldenCase& c) {
  auto f = SafetensorsFile::open(c.expected_path);
  const TensorInfo* t = f->find("input_ids");
  std::vector<int32_t> ids(static_cast<size_t>(t->numel()));
  std::memcpy(ids.data(), f->data(*t), t->nbytes);
  return ids;
}

double row_relative_error(const float* a, const float* b, int n) {
  double num = 0, den = 0;
  for (int i = 0; i < n; ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return INFINITY;
    num = std::max(num, std::fabs(static_cast<double>(a[i]) - b[i]));
    den = std::max(den, std::fabs(static_cast<double>(b[i])));
  }
  return num / den;
}

std::set<int32_t> row_set(const std::vector<int32_t>& v, int t, int k) {
  std::set<int32_t> s;
  for (int i = 0; i < k; ++i)
    if (v[static_cast<size_t>(t) * k + i] >= 0) s.insert(v[static_cast<size_t>(t) * k + i]);
  return s;
}

class SessionTest : public ::testing::TestWithParam<test::GoldenCase> {
 protected:
  void SetUp() override {
    const auto& c = GetParam();
    const ModelSpec spec = load_model_spec(c.model_dir);
    plan_ = std::make_unique<IndexPlan>(IndexPlan::parse(c.plan, spec));
    model_ = Model::load(c.model_dir);
    ids_ = golden_ids(c);
    be_ = make_cpu_backend();
    one_pass_ = prefill(*model_, *plan_, ids_, *be_);
  }
  std::unique_ptr<IndexPlan> plan_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Backend> be_;
  std::vector<int32_t> ids_;
  PrefillResult one_pass_;
};

TEST_P(SessionTest, ChunkedPrefillEqualsOnePass) {
  const int T = one_pass_.tokens, V = one_pass_.vocab, k = one_pass_.k;
  for (int chunk : {1, 5, 16, T - 1}) {
    PrefillOptions po;
    po.chunk = chunk;
    const PrefillResult r = prefill(*model_, *plan_, ids_, *be_, po);
    for (int t = 0; t < T; ++t) {
      EXPECT_LE(row_relative_error(r.logits.data() + static_cast<size_t>(t) * V,
                                   one_pass_.logits.data() + static_cast<size_t>(t) * V, V),
                1e-5)
          << "chunk " << chunk << " position " << t;
    }
    for (size_t l = 0; l < r.topk.size(); ++l)
      for (int t = 0; t < T; ++t)
        ASSERT_EQ(row_set(r.topk[l], t, k), row_set(one_pass_.topk[l], t, k))
            << "chunk " << chunk << " layer " << l << " query " << t;
  }
}

TEST_P(SessionTest, DecodeEqualsPrefill) {
  const int T = one_pass_.tokens, V = one_pass_.vocab;
  Session s(*model_, *plan_, *be_);
  const int prompt = T / 3;
  ForwardOptions fo;
  fo.logits = LogitsWanted::kLast;
  ChunkResult r = s.forward(std::span(ids_).first(prompt), fo);
  ASSERT_EQ(r.logits.size(), static_cast<size_t>(V));
  EXPECT_LE(row_relative_error(r.logits.data(), one_pass_.logits.data() + static_cast<size_t>(prompt - 1) * V, V),
            1e-4);
  for (int t = prompt; t < T; ++t) {
    r = s.forward(std::span(ids_).subspan(t, 1), fo);
    ASSERT_EQ(r.first_position, t);
    EXPECT_LE(row_relative_error(r.logits.data(), one_pass_.logits.data() + static_cast<size_t>(t) * V, V), 1e-4)
        << "decode step at position " << t;
  }
  EXPECT_EQ(s.length(), T);
}

// A cache reserved up front (no growth) and one grown as tokens arrive give the same logits bit
// for bit, prefill and decode; the reservation holds the whole sequence (cache_bytes does not move).
TEST_P(SessionTest, ReservedCacheMatchesGrownCache) {
  const int T = one_pass_.tokens;
  Session grown(*model_, *plan_, *be_), reserved(*model_, *plan_, *be_);
  reserved.reserve(T);
  const int64_t bytes = reserved.cache_bytes();
  EXPECT_GT(bytes, 0);
  ForwardOptions fo;
  fo.logits = LogitsWanted::kLast;
  const int prompt = T / 2;
  EXPECT_EQ(grown.forward(std::span(ids_).first(prompt), fo).logits,
            reserved.forward(std::span(ids_).first(prompt), fo).logits);
  for (int t = prompt; t < T; ++t)
    EXPECT_EQ(grown.forward(std::span(ids_).subspan(t, 1), fo).logits,
              reserved.forward(std::span(ids_).subspan(t, 1), fo).logits)
        << "decode step at position " << t;
  EXPECT_EQ(reserved.cache_bytes(), bytes);
  EXPECT_EQ(reserved.graph_steps(), 0);  // the CPU records no graphs
}

// Model::place puts every weight on the backend (the CPU converts dsa-mini's bf16 to f32), reports
// bytes up to the total, and a Session built afterwards places nothing more.
TEST(Session, PlacedModelIsReusedBySessions) {
  auto model = Model::load(std::string(INDEXCACHE_TEST_DATA) + "/../../models/dsa-mini");
  auto be = make_cpu_backend();
  const size_t before = be->bytes_in_use();
  model->place(*be);
  const size_t placed = be->bytes_in_use();
  EXPECT_GT(placed, before + static_cast<size_t>(model->parameter_count()) * 3);  // ~4 bytes per parameter
  Session s(*model, IndexPlan::full(model->spec().num_layers), *be);
  EXPECT_EQ(be->bytes_in_use(), placed);

  // The progress callback counts up to the total: bf16 host bytes, half of the f32 placed.
  auto other = make_cpu_backend();
  int64_t last = 0, total = -1, calls = 0;
  place_weights(*other, model->spec(), model->weights(), [&](int64_t done, int64_t all) {
    EXPECT_GT(done, last);
    EXPECT_TRUE(total < 0 || total == all);
    last = done;
    total = all;
    ++calls;
  });
  EXPECT_EQ(last, total);
  EXPECT_GT(calls, model->spec().num_layers);
  EXPECT_NEAR(static_cast<double>(total), static_cast<double>(other->bytes_in_use()) / 2, 0.01 * total);
}

// Flipping layer l to S changes nothing before l: resuming at l from the hidden state and
// selections of a run under the old plan gives the logits of a fresh run under the new plan.
TEST_P(SessionTest, ForwardFromLayerEqualsFreshRun) {
  const int L = model_->spec().num_layers, V = one_pass_.vocab;
  Session s(*model_, *plan_, *be_);
  LayerCapture cap({.inputs = true, .selections = true});
  ForwardOptions capture;
  capture.observer = &cap;
  capture.logits = LogitsWanted::kNone;
  s.forward(ids_, capture);
  const std::vector<std::vector<float>>& inputs = cap.inputs;
  ASSERT_EQ(inputs.size(), static_cast<size_t>(L));
  ASSERT_EQ(cap.selections.size(), static_cast<size_t>(L));
  for (int l = 1; l < L; ++l) {
    if (!plan_->is_full(l)) continue;
    std::string pattern = plan_->pattern();
    pattern[l] = 'S';
    const IndexPlan flipped = IndexPlan::from_pattern(pattern, L);
    const PrefillResult fresh = prefill(*model_, flipped, ids_, *be_);
    s.set_plan(flipped);
    const ChunkResult resumed = s.forward_from(l, ids_, {.hidden = inputs[l], .selections = &cap.selections});
    ASSERT_EQ(resumed.logits.size(), fresh.logits.size());
    for (int t = 0; t < one_pass_.tokens; ++t)
      EXPECT_LE(row_relative_error(resumed.logits.data() + static_cast<size_t>(t) * V,
                                   fresh.logits.data() + static_cast<size_t>(t) * V, V),
                1e-6)
          << pattern << " position " << t;
    s.set_plan(*plan_);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, SessionTest, ::testing::ValuesIn(test::golden_cases()),
                         [](const auto& info) { return info.param.name(); });

// What the Session allocates: latent rows on every layer, indexer keys on F layers only, and
// the footprint formula agrees with it.
TEST(KvCache, SharedLayersStoreNoIndexerKeys) {
  const auto cases = test::golden_cases();
  ASSERT_FALSE(cases.empty());
  auto model = Model::load(cases[0].model_dir);
  const ModelSpec& s = model->spec();
  ASSERT_GE(s.num_layers, 4);
  auto be = make_cpu_backend();
  const IndexPlan full = IndexPlan::full(s.num_layers), half = IndexPlan::parse("1/2", s);
  std::vector<int32_t> ids(20, 1);
  Session a(*model, full, *be), b(*model, half, *be);
  a.forward(ids);
  b.forward(ids);
  // Both caches hold the same number of rows (capacity grows the same way); only F layers differ.
  const int64_t rows_a = a.cache_bytes() / kv_cache_footprint(s, full).bytes_per_token();
  ASSERT_GE(rows_a, 20);
  EXPECT_EQ(a.cache_bytes(), rows_a * kv_cache_footprint(s, full).bytes_per_token());
  EXPECT_EQ(b.cache_bytes(), rows_a * kv_cache_footprint(s, half).bytes_per_token());
  EXPECT_EQ(a.cache_bytes() - b.cache_bytes(),
            rows_a * (s.num_layers - half.num_full()) * int64_t{s.index_head_dim} * 4);
  // Switching the plan frees the S layers' keys and gives F layers theirs once tokens arrive.
  a.set_plan(half);
  a.forward(ids);
  EXPECT_EQ(a.cache_bytes(), b.cache_bytes());
  EXPECT_EQ(kv_cache_footprint(s, full).latent_bytes_per_token_per_layer, int64_t{s.kv_lora_rank + s.qk_rope_head_dim} * 4);
}

TEST(Session, OverlongInputIsAnError) {
  const auto cases = test::golden_cases();
  ASSERT_FALSE(cases.empty());
  auto model = Model::load(cases[0].model_dir);
  auto be = make_cpu_backend();
  Session s(*model, model->config_plan(), *be);
  std::vector<int32_t> ids(model->spec().max_position_embeddings + 1, 1);
  EXPECT_THROW(s.forward(ids), Error);
  EXPECT_EQ(s.length(), 0);
}

}  // namespace
}  // namespace indexcache
