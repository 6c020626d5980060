// The distillation loss and its gradient (src/distill/indexer_loss.h): a finite-difference check
// of the C++ gradient on the golden models, and the losses and gradients of torch autograd
// (tests/data/golden_distill, scripts/make_distill_goldens.py).
#include "distill/indexer_loss.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "backend/backend.h"
#include "indexcache/safetensors.h"
#include "indexcache/model.h"
#include "indexcache/session.h"
#include "test_util.h"

namespace indexcache::distill {
namespace {

// The teacher forward of a golden model under the all-F plan, every layer's attention kept.
struct Teacher {
  std::unique_ptr<Model> model;
  std::unique_ptr<Backend> be = make_cpu_backend();
  RopeTable rope;
  std::unique_ptr<TeacherCapture> cap;
  int T = 0;

  Teacher(const std::string& name, const std::vector<int32_t>& ids) {
    LoadOptions lo;
    lo.require_indexer.assign(0, false);
    model = Model::load(test::test_data_dir() + "/golden/" + name, lo);
    const ModelSpec& s = model->spec();
    T = static_cast<int>(ids.size());
    rope = make_rope_table(s, T);
    cap = std::make_unique<TeacherCapture>(s.num_layers);
    Session session(*model, IndexPlan::full(s.num_layers), *be);
    ForwardOptions fo;
    fo.logits = LogitsWanted::kNone;
    fo.observer = cap.get();
    session.forward(ids, fo);
  }
  const ModelSpec& spec() const { return model->spec(); }
  IndexerParams student(int layer) const {
    return IndexerParams::from(model->weights().layers[layer].indexer, spec());
  }
  GroupLoss loss(const IndexerParams& p, int layer, int served, Stage stage, int block = 7) const {
    std::vector<const TeacherLayer*> js;
    for (int j = layer; j < layer + served; ++j) js.push_back(&cap->layers[j]);
    return indexer_group_loss(spec(), rope, p, cap->layers[layer], js, T, stage, block);
  }
};

std::vector<int32_t> random_ids(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids(n);
  for (auto& v : ids) v = static_cast<int32_t>(rng() % vocab);
  return ids;
}

double dot(const IndexerParams& a, const IndexerParams& b) {
  double d = 0;
  auto x = a.all();
  auto y = b.all();
  for (size_t i = 0; i < x.size(); ++i)
    for (size_t j = 0; j < x[i]->size(); ++j) d += static_cast<double>((*x[i])[j]) * (*y[i])[j];
  return d;
}

IndexerParams axpy(const IndexerParams& p, double eps, const IndexerParams& v) {
  IndexerParams out = p;
  auto o = out.all();
  auto d = v.all();
  for (size_t i = 0; i < o.size(); ++i)
    for (size_t j = 0; j < o[i]->size(); ++j) (*o[i])[j] += static_cast<float>(eps * (*d[i])[j]);
  return out;
}

// Layer `layer`'s top-k set per query under `p` (the sparse stage's keys), as the student scores it.
std::vector<std::vector<int>> selection(const Teacher& t, const IndexerParams& p, int layer) {
  const std::vector<float> sc = indexer_scores(t.spec(), t.rope, p, t.cap->layers[layer], t.T);
  std::vector<std::vector<int>> out(t.T);
  for (int i = 0; i < t.T; ++i) {
    std::vector<int>& keys = out[i];
    for (int j = 0; j <= i; ++j) keys.push_back(j);
    const int k = std::min<int>(t.spec().index_topk, i + 1);
    std::partial_sort(keys.begin(), keys.begin() + k, keys.end(),
                      [&](int a, int b) { return sc[i * t.T + a] > sc[i * t.T + b]; });
    keys.resize(k);
    std::sort(keys.begin(), keys.end());
  }
  return out;
}

// The directional derivative of the loss (central differences) along each tensor's gradient, and
// along a random direction over all tensors, equals the gradient's projection, for dense and sparse, single
// and multi targets: a wrong term anywhere in the backward (RoPE transpose, LayerNorm, ReLU mask,
// head weights) moves one of these projections well past the tolerance. The sparse stage holds
// its selection fixed, so the step is shrunk until both ends select what the centre does.
// (The f32 forward and the ReLU kinks limit the differences to about 1 %; the torch fixture
// checks to 1e-4.)
TEST(DistillLoss, GradientMatchesFiniteDifferences) {
  for (const std::string name : {"glm_a", "dsv_a"}) {
    Teacher t(name, random_ids(40, 256, 7));  // 40 tokens > index_topk 16: the sparse stage selects
    ASSERT_GT(t.T, t.spec().index_topk);
    const IndexerParams p = t.student(0);
    const auto centre = selection(t, p, 0);
    std::mt19937 rng(3);
    std::normal_distribution<float> nd;
    for (Stage stage : {Stage::kDense, Stage::kSparse}) {
      for (int served : {1, 3}) {
        const GroupLoss g = t.loss(p, 0, served, stage);
        ASSERT_TRUE(std::isfinite(g.loss) && g.loss > 0) << name;
        for (int which = -1; which < 5; ++which) {
          // Along the gradient of one tensor (the projection is then |g_i|, far above the f32
          // noise, and a wrong g_i cannot match it), and along one random direction over all.
          IndexerParams v = IndexerParams::zeros(t.spec());
          auto vs = v.all();
          const auto gs = g.grad.all();
          for (int i = 0; i < 5; ++i) {
            if (which == i) *vs[i] = *gs[i];
            if (which < 0)
              for (float& x : *vs[i]) x = nd(rng);
          }
          double eps = 1e-3 / std::sqrt(dot(v, v));
          if (stage == Stage::kSparse) {
            int shrinks = 0;
            while (selection(t, axpy(p, eps, v), 0) != centre || selection(t, axpy(p, -eps, v), 0) != centre) {
              eps /= 4;
              ASSERT_LT(++shrinks, 6) << name << ": the selection moves under every step along tensor " << which;
            }
          }
          const double lp = t.loss(axpy(p, eps, v), 0, served, stage).loss;
          const double lm = t.loss(axpy(p, -eps, v), 0, served, stage).loss;
          const double fd = (lp - lm) / (2 * eps), an = dot(g.grad, v);
          EXPECT_NEAR(fd, an, (which < 0 ? 2e-2 : 5e-3) * std::abs(an) + 3e-4)
              << name << " stage " << static_cast<int>(stage) << " served " << served << " tensor " << which;
        }
      }
    }
  }
}

// The query block only tiles the work: any block size gives the same loss and gradient.
TEST(DistillLoss, QueryBlockDoesNotChangeTheResult) {
  Teacher t("glm_a", random_ids(33, 256, 11));
  const IndexerParams p = t.student(1);
  for (Stage stage : {Stage::kDense, Stage::kSparse}) {
    const GroupLoss a = t.loss(p, 1, 2, stage, 1), b = t.loss(p, 1, 2, stage, 64);
    EXPECT_NEAR(a.loss, b.loss, 1e-6 * a.loss);
    auto x = a.grad.all();
    auto y = b.grad.all();
    for (size_t i = 0; i < x.size(); ++i)
      for (size_t j = 0; j < x[i]->size(); ++j) ASSERT_NEAR((*x[i])[j], (*y[i])[j], 1e-5 + 1e-4 * std::abs((*x[i])[j]));
  }
}

// The student's scores are the engine's own indexer scores (the same forward, from the captures).
TEST(DistillLoss, StudentScoresAreTheEngineIndexScores) {
  const std::vector<int32_t> ids = random_ids(29, 256, 5);
  Teacher t("dsv_a", ids);
  LayerCapture scores({.index_scores = true});
  Session session(*t.model, IndexPlan::full(t.spec().num_layers), *t.be);
  session.forward(ids, {.logits = LogitsWanted::kNone, .observer = &scores});
  for (int l = 0; l < t.spec().num_layers; ++l) {
    const std::vector<float> mine = indexer_scores(t.spec(), t.rope, t.student(l), t.cap->layers[l], t.T);
    const std::vector<float>& engine = scores.index_scores[l];
    ASSERT_EQ(mine.size(), engine.size());
    for (int i = 0; i < t.T; ++i)
      for (int j = 0; j <= i; ++j)
        ASSERT_NEAR(mine[i * t.T + j], engine[i * t.T + j], 1e-4 * (1 + std::abs(engine[i * t.T + j])))
            << "layer " << l << " [" << i << ", " << j << "]";
  }
}

// Relative L2 distance ||a - b|| / ||b||.
double rel_l2(std::span<const float> a, std::span<const float> b) {
  double d = 0, n = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    n += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(d / std::max(n, 1e-300));
}

std::vector<float> f32_tensor(const SafetensorsFile& f, const std::string& name) {
  const TensorInfo* t = f.find(name);
  if (!t) throw std::runtime_error(f.path() + ": no tensor " + name);
  std::vector<float> v(static_cast<size_t>(t->numel()));
  convert_to_f32(t->dtype, f.data(*t), v.size(), v.data());
  return v;
}

// Losses and gradients against torch autograd (scripts/make_distill_goldens.py): for every F layer
// of the fixture's plan, both stages and both targets, within 1e-4 relative (f32). The teacher is
// recomputed by the engine from the fixture's ids; its layer inputs must match transformers' first.
TEST(DistillLoss, MatchesTorchAutograd) {
  for (const std::string name : {"glm_a", "dsv_a"}) {
    const auto fx = SafetensorsFile::open(test::test_data_dir() + "/golden_distill/" + name + ".safetensors");
    const TensorInfo* ids_t = fx->find("input_ids");
    ASSERT_NE(ids_t, nullptr);
    std::vector<int32_t> ids(static_cast<size_t>(ids_t->numel()));
    std::memcpy(ids.data(), fx->data(*ids_t), ids.size() * sizeof(int32_t));
    Teacher t(name, ids);
    const IndexPlan plan = IndexPlan::from_pattern(fx->metadata().at("plan"), t.spec().num_layers, "fixture plan");
    for (int l = 0; l < t.spec().num_layers; ++l)
      ASSERT_LT(rel_l2(t.cap->layers[l].input, f32_tensor(*fx, "h." + std::to_string(l))), 1e-5) << name << " h." << l;
    int checked = 0;
    for (int l = 0; l < t.spec().num_layers; ++l) {
      if (!plan.is_full(l)) continue;
      int m = 1;
      while (l + m < t.spec().num_layers && !plan.is_full(l + m)) ++m;
      const IndexerParams p = t.student(l);
      for (Stage stage : {Stage::kDense, Stage::kSparse}) {
        for (const std::string target : {"multi", "single"}) {
          const std::string key = std::string(stage == Stage::kDense ? "dense." : "sparse.") + target + "." +
                                  std::to_string(l);
          const GroupLoss g = t.loss(p, l, target == "multi" ? m : 1, stage);
          const float ref = f32_tensor(*fx, "loss." + key)[0];
          EXPECT_NEAR(g.loss, ref, 1e-4 * std::abs(ref)) << name << " loss." << key;
          const char* names[] = {"wq_b", "wk", "k_norm_w", "k_norm_b", "weights_proj"};
          auto grads = g.grad.all();
          for (int i = 0; i < 5; ++i)
            EXPECT_LT(rel_l2(*grads[i], f32_tensor(*fx, "grad." + key + "." + names[i])), 1e-4)
                << name << " grad." << key << "." << names[i];
          ++checked;
        }
      }
    }
    EXPECT_GE(checked, 8) << name;
  }
}

}  // namespace
}  // namespace indexcache::distill
