// The batched engine against the one-sequence Session: several sequences of different lengths,
// under different plans, stepped together through prefill chunks and decode tokens over a
// fragmented page pool (small pages, pages freed and reused mid-run) give every sequence the
// logits its own Session gives it; page accounting and every bad step's error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "backend/backend.h"
#include "golden_fixture.h"
#include "indexcache/batch_session.h"
#include "indexcache/error.h"
#include "indexcache/model.h"
#include "indexcache/session.h"

namespace indexcache {
namespace {

double max_relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size() || a.empty()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;
    num = std::max(num, std::fabs(static_cast<double>(a[i]) - b[i]));
    den = std::max(den, std::fabs(static_cast<double>(b[i])));
  }
  return num / den;
}

int32_t argmax(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

std::vector<std::string> model_dirs() {
  std::vector<std::string> d = test::golden_model_dirs();
  d.push_back(std::string(INDEXCACHE_TEST_DATA) + "/../../models/dsa-mini");
  return d;
}

class BatchSessionTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    model_ = Model::load(GetParam());
    be_ = make_cpu_backend();
    const ModelSpec& s = model_->spec();
    plans_ = {IndexPlan::full(s.num_layers), IndexPlan::from_freq(2, 1, s.num_layers), model_->config_plan()};
  }
  std::vector<int32_t> random_ids(int n, uint32_t seed) const {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int32_t> d(0, model_->spec().vocab_size - 1);
    std::vector<int32_t> v(n);
    for (int32_t& x : v) x = d(rng);
    return v;
  }
  std::unique_ptr<Model> model_;
  std::unique_ptr<Backend> be_;
  std::vector<IndexPlan> plans_;
};

TEST_P(BatchSessionTest, EverySequenceGetsItsOwnSessionsLogits) {
  const int L = model_->spec().index_topk;
  // Lengths below, at and past index_topk (selections with -1 slots and real top-k ones), a
  // one-token prompt, and prompts that do not fill their last page.
  const std::vector<int> lengths = {3 * L + 5, 5, L, 1, 2 * L - 3};
  BatchSession batch(*model_, plans_, *be_, {.page_tokens = 4, .pages = 512});
  struct Seq {
    std::vector<int32_t> ids;
    int64_t id;
    std::unique_ptr<Session> ref;
    int fed = 0;
  };
  std::vector<Seq> seqs;
  for (size_t i = 0; i < lengths.size(); ++i) {
    const int plan = static_cast<int>(i % plans_.size());
    Seq q{random_ids(lengths[i], 100 + static_cast<uint32_t>(i)), batch.open(plan),
          std::make_unique<Session>(*model_, plans_[plan], *be_)};
    seqs.push_back(std::move(q));
  }
  // A sequence that takes pages early and is closed mid-run, so that later pages interleave.
  const int64_t spacer = batch.open(0);
  const std::vector<int32_t> spacer_ids = random_ids(9, 7);
  batch.step(std::vector<BatchSession::Piece>{{.sequence = spacer, .ids = spacer_ids, .logits = false}});

  // Prefill in chunks of at most 7 tokens, all unfinished sequences in each step, until every
  // prompt is in; each sequence's last chunk asks for logits.
  std::vector<std::vector<float>> last(seqs.size());
  int steps = 0;
  while (std::any_of(seqs.begin(), seqs.end(), [](const Seq& q) { return q.fed < static_cast<int>(q.ids.size()); })) {
    std::vector<BatchSession::Piece> pieces;
    std::vector<size_t> who;
    for (size_t i = 0; i < seqs.size(); ++i) {
      Seq& q = seqs[i];
      const int left = static_cast<int>(q.ids.size()) - q.fed;
      if (left == 0) continue;
      const int m = std::min(left, 7 - static_cast<int>(i % 3));  // chunks differ per sequence
      pieces.push_back({.sequence = q.id, .ids = std::span(q.ids).subspan(q.fed, m), .logits = m == left});
      who.push_back(i);
      q.fed += m;
    }
    const auto out = batch.step(pieces);
    for (size_t j = 0; j < who.size(); ++j)
      if (pieces[j].logits) last[who[j]] = out[j];
    if (++steps == 2) batch.close(spacer);
  }
  for (size_t i = 0; i < seqs.size(); ++i) {
    const ChunkResult r = seqs[i].ref->forward(seqs[i].ids, {.logits = LogitsWanted::kLast});
    EXPECT_LT(max_relative_error(last[i], r.logits), 1e-4) << "prefill of sequence " << i;
    EXPECT_EQ(argmax(last[i]), argmax(r.logits)) << "sequence " << i;
  }
  // Greedy decode of 6 tokens, every sequence in every step.
  for (int t = 0; t < 6; ++t) {
    std::vector<int32_t> next(seqs.size());
    std::vector<BatchSession::Piece> pieces;
    for (size_t i = 0; i < seqs.size(); ++i) {
      next[i] = argmax(last[i]);
      pieces.push_back({.sequence = seqs[i].id, .ids = std::span(&next[i], 1)});
    }
    const auto out = batch.step(pieces);
    for (size_t i = 0; i < seqs.size(); ++i) {
      const ChunkResult r = seqs[i].ref->forward(std::span(&next[i], 1), {.logits = LogitsWanted::kLast});
      EXPECT_LT(max_relative_error(out[i], r.logits), 1e-4) << "decode step " << t << " of sequence " << i;
      EXPECT_EQ(batch.length(seqs[i].id), seqs[i].ref->length());
      last[i] = out[i];
    }
  }
  for (const Seq& q : seqs) batch.close(q.id);
  EXPECT_EQ(batch.pages_free(), batch.pages_total());
  EXPECT_EQ(batch.sequences(), 0);
}

TEST_P(BatchSessionTest, PagesAreCountedTakenAndGivenBack) {
  BatchSession batch(*model_, plans_, *be_, {.page_tokens = 8, .pages = 5});
  EXPECT_EQ(batch.pages_total(), 5);
  const int64_t a = batch.open(0), b = batch.open(1);
  EXPECT_EQ(batch.pages_needed(a, 17), 3);
  const std::vector<int32_t> ids = random_ids(17, 1);
  batch.step(std::vector<BatchSession::Piece>{{.sequence = a, .ids = ids}});
  EXPECT_EQ(batch.pages_free(), 2);
  EXPECT_EQ(batch.pages_needed(a, 7), 0);  // the third page has room for 7 more
  EXPECT_EQ(batch.pages_needed(a, 8), 1);
  // b's 24 tokens need 3 pages, 2 are free: refused, and nothing changed.
  const std::vector<int32_t> more = random_ids(24, 2);
  try {
    batch.step(std::vector<BatchSession::Piece>{{.sequence = b, .ids = more}});
    FAIL() << "a step past the pool ran";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kRuntime);
    EXPECT_NE(std::string(e.what()).find("out of KV pages"), std::string::npos) << e.what();
  }
  EXPECT_EQ(batch.pages_free(), 2);
  EXPECT_EQ(batch.length(b), 0);
  batch.close(a);
  EXPECT_EQ(batch.pages_free(), 5);
  batch.step(std::vector<BatchSession::Piece>{{.sequence = b, .ids = more}});
  EXPECT_EQ(batch.length(b), 24);
  EXPECT_EQ(batch.pages_free(), 2);
  const int64_t bytes_per_token = (model_->spec().kv_lora_rank + model_->spec().qk_rope_head_dim) * 4;
  EXPECT_GE(batch.page_bytes(), bytes_per_token * model_->spec().num_layers * 8);
}

TEST_P(BatchSessionTest, BadStepsAreErrorsThatChangeNothing) {
  BatchSession batch(*model_, plans_, *be_, {.page_tokens = 16, .pages = 64});
  const ModelSpec& s = model_->spec();
  const int64_t a = batch.open(0);
  const std::vector<int32_t> ok = random_ids(3, 3);
  const std::vector<int32_t> bad_id = {0, s.vocab_size};
  const std::vector<int32_t> negative = {-1};
  const std::vector<int32_t> none;
  const std::vector<int32_t> too_long(static_cast<size_t>(s.max_position_embeddings) + 1, 0);
  auto expect_bad = [&](std::vector<BatchSession::Piece> pieces, const std::string& says) {
    try {
      batch.step(pieces);
      ADD_FAILURE() << "ran a step that should fail with: " << says;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
    EXPECT_EQ(batch.length(a), 0);
    EXPECT_EQ(batch.pages_free(), 64);
  };
  expect_bad({{.sequence = a, .ids = bad_id}}, "outside the vocabulary");
  expect_bad({{.sequence = a, .ids = negative}}, "outside the vocabulary");
  expect_bad({{.sequence = a, .ids = none}}, "empty piece");
  expect_bad({{.sequence = 999, .ids = ok}}, "no open sequence 999");
  expect_bad({{.sequence = a, .ids = ok}, {.sequence = a, .ids = ok}}, "appears twice");
  expect_bad({{.sequence = a, .ids = too_long}}, "exceed max_position_embeddings");
  EXPECT_THROW(batch.open(static_cast<int>(plans_.size())), Error);
  EXPECT_THROW(BatchSession(*model_, {}, *be_), Error);
  EXPECT_THROW(BatchSession(*model_, plans_, *be_, {.page_tokens = 0}), Error);
}

TEST_P(BatchSessionTest, PlansAddedLaterNeedTheirKeyPools) {
  const ModelSpec& s = model_->spec();
  BatchSession only_full(*model_, {IndexPlan::full(s.num_layers)}, *be_, {.page_tokens = 16, .pages = 8});
  EXPECT_EQ(only_full.add_plan(IndexPlan::from_freq(2, 1, s.num_layers)), 1);
  EXPECT_EQ(only_full.add_plan(IndexPlan::full(s.num_layers)), 0);  // already there
  BatchSession half(*model_, {IndexPlan::from_freq(2, 1, s.num_layers)}, *be_, {.page_tokens = 16, .pages = 8});
  try {
    half.add_plan(IndexPlan::full(s.num_layers));
    FAIL() << "a plan needing key pools the batch lacks was added";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 1"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Models, BatchSessionTest, ::testing::ValuesIn(model_dirs()),
                         [](const auto& info) {
                           std::string n = info.param.substr(info.param.find_last_of('/') + 1);
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

}  // namespace
}  // namespace indexcache
