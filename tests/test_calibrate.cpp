// The greedy layer search: identical plans and losses to the naive search (every candidate a
// full forward) at a fraction of the layer-forwards; resume gives the same result; stop rules.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "backend/backend.h"
#include "golden_fixture.h"
#include "indexcache/calibrate.h"
#include "indexcache/error.h"
#include "indexcache/evaluate.h"
#include "indexcache/model.h"
#include "indexcache/overlap.h"
#include "indexcache/session.h"

namespace indexcache {
namespace {

std::vector<std::vector<int32_t>> random_batches(int vocab, int count, int tokens, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> tok(0, vocab - 1);
  std::vector<std::vector<int32_t>> b(count, std::vector<int32_t>(tokens));
  for (auto& v : b)
    for (auto& t : v) t = tok(rng);
  return b;
}

struct Fixture {
  std::unique_ptr<Model> model;
  std::unique_ptr<Backend> be = make_cpu_backend();
  std::vector<std::vector<int32_t>> batches;
};

Fixture load(const std::string& name) {
  Fixture f;
  for (const auto& dir : test::golden_model_dirs())
    if (dir.size() >= name.size() && dir.compare(dir.size() - name.size(), name.size(), name) == 0)
      f.model = Model::load(dir);
  if (!f.model) throw std::runtime_error("no golden model " + name);
  f.batches = random_batches(f.model->spec().vocab_size, 2, 40, 5);
  return f;
}

TEST(Calibrate, MatchesNaiveSearchWithFewerLayerForwards) {
  for (const char* name : {"glm_a", "dsv_a"}) {
    Fixture f = load(name);
    CalibrateOptions fast, naive;
    fast.stop.keep_fraction = naive.stop.keep_fraction = 0.34;
    naive.naive = true;
    const CalibrationState a = calibrate(*f.model, f.batches, *f.be, fast);
    const CalibrationState b = calibrate(*f.model, f.batches, *f.be, naive);
    EXPECT_EQ(a.plan(), b.plan()) << name;
    ASSERT_EQ(a.steps.size(), b.steps.size());
    EXPECT_DOUBLE_EQ(a.full_loss, b.full_loss);
    for (size_t i = 0; i < a.steps.size(); ++i) {
      EXPECT_EQ(a.steps[i].flipped, b.steps[i].flipped);
      ASSERT_EQ(a.steps[i].candidates.size(), b.steps[i].candidates.size());
      for (size_t c = 0; c < a.steps[i].candidates.size(); ++c)
        EXPECT_NEAR(a.steps[i].candidates[c].loss, b.steps[i].candidates[c].loss, 1e-9 * b.full_loss);
    }
    EXPECT_EQ(a.naive_layer_forwards, b.layer_forwards) << name;
    // The saving, counted by hand: one base run (N layers per batch), then each candidate flip of
    // layer l resumes at l (N - l layers per batch); the winner's run is the next step's base.
    const int N = f.model->spec().num_layers;
    const int64_t B = static_cast<int64_t>(f.batches.size());
    int64_t expected = B * N;
    for (const auto& step : a.steps)
      for (const auto& cand : step.candidates) expected += B * (N - cand.layer);
    EXPECT_EQ(a.layer_forwards, expected) << name;
    EXPECT_LT(a.layer_forwards, b.layer_forwards);
    // The committed loss is the plan's loss from scratch.
    EXPECT_NEAR(a.steps.back().loss, plan_loss(*f.model, IndexPlan::from_pattern(a.plan(), f.model->spec().num_layers), f.batches, *f.be),
                1e-9 * a.full_loss);
    // layer 0 stays F; the plan keeps ceil(0.34 * N) F layers.
    EXPECT_EQ(a.plan()[0], 'F');
    const std::string plan = a.plan();
    EXPECT_EQ(std::count(plan.begin(), plan.end(), 'F'), static_cast<long>(std::ceil(0.34 * N))) << plan;
  }
}

TEST(Calibrate, ResumeEndsWithTheSamePlan) {
  Fixture f = load("glm_a");
  CalibrateOptions o;
  o.stop.keep_layers = 2;
  const CalibrationState whole = calibrate(*f.model, f.batches, *f.be, o);
  // Interrupt after the first committed step, then resume from that state.
  CalibrationState saved;
  CalibrateOptions interrupted = o;
  interrupted.on_step = [&](const CalibrationState& s) {
    saved = s;
    throw std::runtime_error("interrupt");
  };
  EXPECT_THROW(calibrate(*f.model, f.batches, *f.be, interrupted), std::runtime_error);
  ASSERT_EQ(saved.steps.size(), 1u);
  const CalibrationState resumed = calibrate(*f.model, f.batches, *f.be, o, saved);
  EXPECT_EQ(resumed.plan(), whole.plan());
  ASSERT_EQ(resumed.steps.size(), whole.steps.size());
  for (size_t i = 0; i < whole.steps.size(); ++i) EXPECT_EQ(resumed.steps[i].flipped, whole.steps[i].flipped);
}

TEST(Calibrate, MaxLossIncreaseStops) {
  Fixture f = load("glm_b");
  // The unlimited search down to one F layer gives the loss increase of every step.
  CalibrateOptions all;
  all.stop.keep_layers = 1;
  const CalibrationState full = calibrate(*f.model, f.batches, *f.be, all);
  ASSERT_GE(full.steps.size(), 2u);
  auto increase = [&](size_t i) { return 100.0 * (full.steps[i].loss - full.full_loss) / full.full_loss; };
  // A limit below the largest increase stops the search at the first step that exceeds it.
  double worst = increase(0);
  for (size_t i = 0; i < full.steps.size(); ++i) worst = std::max(worst, increase(i));
  ASSERT_GT(worst, 0.0) << "no flip raised the loss: the test cannot tell a stop from the end";
  const double limit = worst / 2;
  size_t stop_at = 0;
  while (increase(stop_at) <= limit) ++stop_at;
  CalibrateOptions o;
  o.stop.keep_layers = 1;
  o.stop.max_loss_increase = limit;
  const CalibrationState s = calibrate(*f.model, f.batches, *f.be, o);
  ASSERT_EQ(s.steps.size(), stop_at) << s.stop_reason;
  for (size_t i = 0; i < stop_at; ++i) EXPECT_EQ(s.steps[i].flipped, full.steps[i].flipped);
  EXPECT_EQ(s.stop_reason.rfind("the next flip (layer " + std::to_string(full.steps[stop_at].flipped) + ")", 0), 0u)
      << s.stop_reason;
  // Without the limit the same search ends by the layer count, with another reason.
  EXPECT_EQ(full.stop_reason, "reached 1 F layers");
}

TEST(Calibrate, BadOptions) {
  Fixture f = load("glm_a");
  CalibrateOptions o;
  o.stop.keep_fraction = 0.0;
  EXPECT_THROW(calibrate(*f.model, f.batches, *f.be, o), Error);
  o.stop.keep_fraction = 1.5;
  EXPECT_THROW(calibrate(*f.model, f.batches, *f.be, o), Error);
  o.stop = {};
  o.stop.keep_layers = 0;
  EXPECT_THROW(calibrate(*f.model, f.batches, *f.be, o), Error);
  EXPECT_THROW(calibrate(*f.model, {}, *f.be, CalibrateOptions{}), Error);
}

TEST(Overlap, IdenticalLayersOverlapFully) {
  OverlapAccumulator acc(2, 2);
  // 4 tokens, k = 2: queries 2 and 3 qualify.
  const std::vector<std::vector<int32_t>> topk = {{0, -1, 0, 1, 2, 0, 3, 1}, {0, -1, 0, 1, 1, 2, 3, 2}};
  acc.add(topk, 4);
  const auto m = acc.matrix();
  EXPECT_EQ(acc.queries(), 2);
  EXPECT_DOUBLE_EQ(m[0][0], 1.0);
  // t2: {0,2} vs {1,2} -> 1/2; t3: {1,3} vs {2,3} -> 1/2.
  EXPECT_DOUBLE_EQ(m[0][1], 0.5);
  EXPECT_DOUBLE_EQ(m[1][0], 0.5);
}

TEST(Evaluate, NextTokenLossByHand) {
  // vocab 2, logits rows (0, ln 3) and (0, 0): p(1|t0) = 3/4, p(0|t1) = 1/2.
  const std::vector<float> logits = {0.0f, std::log(3.0f), 0.0f, 0.0f, 5.0f, 5.0f};
  const std::vector<int32_t> ids = {0, 1, 0};
  const LossSum s = next_token_loss(logits, ids, 2);
  EXPECT_EQ(s.tokens, 2);
  EXPECT_NEAR(s.nll, -std::log(0.75) - std::log(0.5), 1e-6);
  const auto w = make_windows(std::vector<int32_t>{1, 2, 3, 4, 5, 6, 7}, 3);
  ASSERT_EQ(w.size(), 2u);  // the single trailing token predicts nothing: dropped
  EXPECT_EQ(w[1], (std::vector<int32_t>{4, 5, 6}));
  EXPECT_EQ(make_windows(std::vector<int32_t>{1, 2, 3, 4, 5, 6, 7, 8}, 3).back(), (std::vector<int32_t>{7, 8}));
  EXPECT_EQ(make_windows(std::vector<int32_t>{1, 2, 3, 4, 5, 6, 7, 8}, 3, 1).size(), 1u);
}

}  // namespace
}  // namespace indexcache
