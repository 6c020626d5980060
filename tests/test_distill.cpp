// indexcache::distill_indexers and write_distilled_checkpoint (include/indexcache/distill.h) on a
// golden model: training lowers the loss it optimises, the written checkpoint loads under its plan
// with the trained indexers, no S-layer indexers, and every other tensor byte for byte unchanged.
#include "indexcache/distill.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "backend/backend.h"
#include "distill/indexer_loss.h"
#include "indexcache/calibrate.h"
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

namespace fs = std::filesystem;

std::vector<std::vector<int32_t>> windows(int count, int tokens, int vocab) {
  std::mt19937 rng(17);
  std::vector<std::vector<int32_t>> w(count, std::vector<int32_t>(tokens));
  for (auto& v : w)
    for (auto& id : v) id = static_cast<int32_t>(rng() % vocab);
  return w;
}

std::unique_ptr<Model> golden(const std::string& name) {
  LoadOptions lo;
  return Model::load(test::test_data_dir() + "/golden/" + name, lo);
}

TEST(Distill, TrainingLowersTheLossItOptimises) {
  auto model = golden("glm_a");
  auto be = make_cpu_backend();
  const IndexPlan plan = IndexPlan::from_pattern("FSSFSF", 6, "plan");
  for (DistillStage stage : {DistillStage::kDense, DistillStage::kSparse}) {
    DistillOptions o;
    o.steps = 25;  // two windows: steps 1 and 25 both see window 0
    o.lr = 5e-3;
    o.stage = stage;
    const DistillResult r = distill_indexers(*model, *be, plan, windows(2, 40, 256), o);
    ASSERT_EQ(r.steps.size(), 25u);
    ASSERT_EQ(r.indexers.size(), 3u);
    EXPECT_EQ(r.steps.front().window, 0);
    EXPECT_EQ(r.steps.back().window, 0);
    EXPECT_LT(r.steps.back().loss, 0.8 * r.steps.front().loss) << "stage " << static_cast<int>(stage);
  }
}

// One marker per step, in the series of its stage, and the stages' names in the legend.
TEST(Distill, CurveSvgHasAMarkerPerStep) {
  DistillResult r;
  for (int i = 1; i <= 7; ++i) r.steps.push_back({.step = i, .sparse = i > 4, .loss = 3.0 / i});
  const std::string svg = distill_curve_svg(r, "curve <test>");
  auto count = [&](const std::string& what) {
    int n = 0;
    for (size_t p = svg.find(what); p != std::string::npos; p = svg.find(what, p + 1)) ++n;
    return n;
  };
  EXPECT_EQ(svg.rfind("<svg", 0) == 0 || svg.rfind("<?xml", 0) == 0, true) << svg.substr(0, 80);
  EXPECT_EQ(count("<circle"), 4 + 1);  // dense steps, and the legend's marker
  EXPECT_EQ(count("width=\"9\""), 3 + 1);  // sparse steps (squares), and the legend's
  EXPECT_NE(svg.find("curve &lt;test&gt;"), std::string::npos);
  EXPECT_NE(svg.find(">sparse<"), std::string::npos);
}

TEST(Distill, WrittenCheckpointLoadsWithTheTrainedIndexers) {
  auto model = golden("glm_a");
  auto be = make_cpu_backend();
  const IndexPlan plan = IndexPlan::from_pattern("FSSFSF", 6, "plan");
  DistillOptions o;
  o.steps = 3;
  o.lr = 1e-2;
  const DistillResult r = distill_indexers(*model, *be, plan, windows(1, 24, 256), o);
  const std::string out = test::make_temp_dir("distill") + "/distilled";
  write_distilled_checkpoint(*model, plan, r, out);

  auto trained = Model::load(out);
  EXPECT_EQ(trained->config_plan().pattern(), "FSSFSF");
  const WeightStore before = WeightStore::open_dir(model->dir()), after = WeightStore::open_dir(out);
  int unchanged = 0;
  for (const std::string& name : before.names()) {
    const bool indexer = name.find(".self_attn.indexer.") != std::string::npos;
    const int layer = tensor_layer_index(name).value_or(-1);
    const auto a = before.find(name), b = after.find(name);
    if (indexer && !plan.is_full(layer)) {
      EXPECT_EQ(b.info, nullptr) << name << " (an S layer's indexer) was written";
      continue;
    }
    ASSERT_NE(b.info, nullptr) << name;
    ASSERT_EQ(a.info->dtype, b.info->dtype) << name;
    ASSERT_EQ(a.info->shape, b.info->shape) << name;
    const bool same = std::memcmp(a.file->data(*a.info), b.file->data(*b.info), a.info->nbytes) == 0;
    if (indexer) {
      EXPECT_FALSE(same) << name << " was not trained";
    } else {
      EXPECT_TRUE(same) << name << " changed";
      ++unchanged;
    }
  }
  EXPECT_GT(unchanged, 50);
  // The trained wq_b of layer 3 is what the trainer returned (f32 checkpoint: exactly).
  const auto wq = after.find("model.layers.3.self_attn.indexer.wq_b.weight");
  ASSERT_NE(wq.info, nullptr);
  ASSERT_EQ(r.indexers[1].layer, 3);
  EXPECT_EQ(std::memcmp(wq.file->data(*wq.info), r.indexers[1].wq_b.data(), wq.info->nbytes), 0);
  // The engine runs it under its own plan.
  Session s(*trained, trained->config_plan(), *be);
  const ChunkResult res = s.forward(windows(1, 20, 256)[0]);
  for (float v : res.logits) ASSERT_TRUE(std::isfinite(v));
}

// A run resumed from the state file it wrote at step 3 ends bit for bit where the uninterrupted run
// ends (indexers, curve), across the dense -> sparse switch of --stage both: the AdamW moments,
// the step counter and the window order all come back.
TEST(Distill, ResumedRunEqualsOneUninterruptedRun) {
  auto model = golden("glm_a");
  auto be = make_cpu_backend();
  const IndexPlan plan = IndexPlan::from_pattern("FSSFSF", 6, "plan");
  const std::string state = test::make_temp_dir("distill-state") + "/state.safetensors";
  DistillOptions o;
  o.steps = 6;
  o.lr = 1e-2;
  o.stage = DistillStage::kBoth;
  o.fingerprint = "test run";
  o.state_every = 3;
  int saved = 0;
  o.on_state = [&](const DistillState& st) {
    ++saved;
    if (st.step == 3) write_distill_state(state, st);
  };
  const auto data = windows(2, 24, 256);
  const DistillResult straight = distill_indexers(*model, *be, plan, data, o);
  EXPECT_EQ(saved, 2);  // steps 3 and 6

  const DistillState st = read_distill_state(state);
  ASSERT_EQ(st.step, 3);
  ASSERT_EQ(st.steps.size(), 3u);
  EXPECT_EQ(st.fingerprint, "test run");
  DistillOptions r = o;
  r.on_state = nullptr;
  r.resume = &st;
  int steps_run = 0;
  const DistillResult resumed = distill_indexers(*model, *be, plan, data, r, [&](const DistillStep& s) {
    EXPECT_EQ(s.step, 4 + steps_run++);
  });
  EXPECT_EQ(steps_run, 3);
  ASSERT_EQ(resumed.steps.size(), straight.steps.size());
  for (size_t i = 0; i < straight.steps.size(); ++i) {
    EXPECT_EQ(resumed.steps[i].loss, straight.steps[i].loss) << "step " << i + 1;
    EXPECT_EQ(resumed.steps[i].window, straight.steps[i].window) << "step " << i + 1;
    EXPECT_EQ(resumed.steps[i].sparse, straight.steps[i].sparse) << "step " << i + 1;
  }
  ASSERT_EQ(resumed.indexers.size(), straight.indexers.size());
  for (size_t i = 0; i < straight.indexers.size(); ++i) {
    EXPECT_EQ(resumed.indexers[i].wq_b, straight.indexers[i].wq_b) << "layer " << straight.indexers[i].layer;
    EXPECT_EQ(resumed.indexers[i].wk, straight.indexers[i].wk);
    EXPECT_EQ(resumed.indexers[i].k_norm_w, straight.indexers[i].k_norm_w);
    EXPECT_EQ(resumed.indexers[i].k_norm_b, straight.indexers[i].k_norm_b);
    EXPECT_EQ(resumed.indexers[i].weights_proj, straight.indexers[i].weights_proj);
  }
}

TEST(Distill, BadStateIsAClearError) {
  auto model = golden("glm_a");
  auto be = make_cpu_backend();
  const IndexPlan plan = IndexPlan::from_pattern("FSSFSF", 6, "plan");
  auto error_of = [&](auto&& f) -> std::string {
    try {
      f();
    } catch (const Error& e) {
      EXPECT_EQ(e.exit_code(), 2);
      return e.what();
    }
    return "no error";
  };
  // A checkpoint is not a state.
  const std::string weights = model->dir() + "/model.safetensors";
  EXPECT_NE(error_of([&] { read_distill_state(weights); }).find("not a distill state"), std::string::npos);
  DistillOptions o;
  o.steps = 2;
  o.fingerprint = "a";
  o.state_every = 1;
  DistillState st;
  o.on_state = [&](const DistillState& s) { st = s; };
  distill_indexers(*model, *be, plan, windows(1, 8, 256), o);
  ASSERT_EQ(st.step, 2);
  DistillOptions r;
  r.steps = 2;
  r.resume = &st;
  r.fingerprint = "b";
  EXPECT_NE(error_of([&] { distill_indexers(*model, *be, plan, windows(1, 8, 256), r); }).find("other settings"),
            std::string::npos);
  r.fingerprint = "a";
  r.steps = 1;  // the state is past the run's end
  EXPECT_NE(error_of([&] { distill_indexers(*model, *be, plan, windows(1, 8, 256), r); }).find("--steps"),
            std::string::npos);
  r.steps = 2;
  const IndexPlan other = IndexPlan::from_pattern("FSFSSF", 6, "plan");
  EXPECT_NE(error_of([&] { distill_indexers(*model, *be, other, windows(1, 8, 256), r); }).find("F layers"),
            std::string::npos);
  // A state file with a tensor cut short.
  const std::string path = test::make_temp_dir("distill-bad-state") + "/state.safetensors";
  st.second_moments[0].wk.pop_back();
  write_distill_state(path, st);
  const DistillState back = read_distill_state(path);
  r.resume = &back;
  EXPECT_NE(error_of([&] { distill_indexers(*model, *be, plan, windows(1, 8, 256), r); }).find("wrong size"),
            std::string::npos);
}

// calibrate on a distilled model (indexers only in its F layers) starts from those layers: the
// reference loss is that plan's, only its F layers are candidates, and the exact resume-at-layer
// search still equals the naive one.
TEST(Distill, CalibrateStartsFromADistilledModelsPlan) {
  auto model = golden("glm_a");
  auto be = make_cpu_backend();
  const IndexPlan plan = IndexPlan::from_pattern("FSSFSF", 6, "plan");
  DistillOptions o;
  o.steps = 2;
  o.lr = 1e-2;
  const DistillResult r = distill_indexers(*model, *be, plan, windows(1, 24, 256), o);
  const std::string out = test::make_temp_dir("distill-calib") + "/distilled";
  write_distilled_checkpoint(*model, plan, r, out);
  LoadOptions lo;
  lo.require_indexer.assign(6, false);
  auto distilled = Model::load(out, lo);
  const auto data = windows(2, 32, 256);
  CalibrateOptions co;
  co.stop.keep_layers = 1;
  const CalibrationState st = calibrate(*distilled, data, *be, co);
  EXPECT_EQ(st.start_plan, "FSSFSF");
  EXPECT_EQ(st.reference(), "start plan");
  EXPECT_DOUBLE_EQ(st.full_loss, plan_loss(*distilled, plan, data, *be));
  ASSERT_EQ(st.steps.size(), 2u);
  ASSERT_EQ(st.steps[0].candidates.size(), 2u);
  EXPECT_EQ(st.steps[0].candidates[0].layer, 3);
  EXPECT_EQ(st.steps[0].candidates[1].layer, 5);
  EXPECT_EQ(st.plan(), "FSSSSS");
  co.naive = true;
  const CalibrationState naive = calibrate(*distilled, data, *be, co);
  for (size_t i = 0; i < st.steps.size(); ++i) {
    EXPECT_EQ(naive.steps[i].flipped, st.steps[i].flipped);
    EXPECT_EQ(naive.steps[i].loss, st.steps[i].loss);
  }
  EXPECT_LT(st.layer_forwards, naive.layer_forwards);
  // A state begun on the original model (all-F) does not resume on the distilled one.
  CalibrateOptions one;
  one.stop.keep_layers = 5;
  const CalibrationState all_f = calibrate(*model, data, *be, one);
  ASSERT_EQ(all_f.start_plan, "");
  try {
    calibrate(*distilled, data, *be, co, all_f);
    ADD_FAILURE() << "resumed a state from another start plan";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("began from plan FFFFFF"), std::string::npos) << e.what();
  }
}

TEST(Distill, BadInputIsAClearError) {
  auto model = golden("glm_a");
  auto be = make_cpu_backend();
  const IndexPlan plan = IndexPlan::from_pattern("FSSFSF", 6, "plan");
  auto error_of = [&](auto&& f) -> std::string {
    try {
      f();
    } catch (const Error& e) {
      EXPECT_EQ(e.exit_code(), 2);
      return e.what();
    }
    return "no error";
  };
  DistillOptions o;
  o.steps = 0;
  EXPECT_EQ(error_of([&] { distill_indexers(*model, *be, plan, windows(1, 8, 256), o); }),
            "--steps: must be at least 1");
  o.steps = 1;
  EXPECT_EQ(error_of([&] { distill_indexers(*model, *be, plan, {}, o); }), "distill data: no windows to train on");
  EXPECT_EQ(error_of([&] { distill_indexers(*model, *be, plan, {{5}}, o); }),
            "distill data: a window needs at least 2 tokens");
  const DistillResult r = distill_indexers(*model, *be, plan, windows(1, 8, 256), o);
  EXPECT_EQ(error_of([&] { write_distilled_checkpoint(*model, plan, r, model->dir()); }),
            "--out: is the input model's directory");
}

}  // namespace
}  // namespace indexcache
