// The GPU model end to end on real checkpoints against transformers' golden fixtures: the four tiny
// golden models (tests/data/golden: glm_a, glm_b, dsv_a, dsv_b; f32 / bf16 / f16 weights, packed and
// per-expert experts, sharded, tied embeddings, default and YaRN RoPE, both indexer RoPE layouts) and
// the embedded model (models/dsa-mini with tests/data/model_golden), for every plan of the fixtures.
// These shapes are not the production DSA shapes, so they exercise the generic kernels
// (src/backend/cuda/dsa_generic.h) inside the real runner (src/gpu/synthetic_gpu_model.h).
//
// Per (model, plan), bf16 weights and activations against an f32 reference. Two kinds of checks:
// those whose error bf16 bounds (asserted), and those that go through a discrete decision whose f32
// margin can be smaller than bf16 noise (a MoE routing choice: the golden models are random, their
// routing margins only > 1e-4), which are reported, not asserted, past the first such decision.
//  (a) index scores (causal part, keys <= the row's position) of F layers: max |gpu - ref| <=
//      kScoreTol * the layer's max |ref|. Asserted where no discrete decision lies upstream: with
//      selections forced to the fixture's (golden models), F layers up to the first MoE layer;
//      free-running, layer 0. Reported beyond.
//  (b) free-running selections vs the fixture as sets: an element may differ only when its fixture
//      score lies within 2x that row's measured score error (+1e-6 of the row's max) of the k-th
//      score: a swap the observed score perturbation explains. Golden models: layers up to the first
//      MoE layer; dsa-mini: every layer.
//  (c) forced selections (golden models): logits relative L2 per row, reported.
//  (d) free-running logits: dsa-mini asserted (logits_ok), golden models reported.
//  (e) chunked prefill equals one chunk (same selections): logits per row within 2e-2 rel L2.
//  (f) prefill of T-1 tokens then one decode step (GEMV path) vs the full prefill's last row:
//      within 2e-2 relative L2 on dsa-mini, reported on the golden models.
// An exact deep comparison on the random golden models needs an f32 GPU path (not built yet).
// Skips without a CUDA device. Summary lines start with "[cuda-e2e]", timings with "[cuda-ops]".
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/device_buffer.h"
#include "gpu/synthetic_gpu_model.h"
#include "indexcache/index_plan.h"
#include "indexcache/model_spec.h"
#include "indexcache/safetensors.h"
#include "cuda_test_util.h"

#ifndef INDEXCACHE_SOURCE_DIR
#define INDEXCACHE_SOURCE_DIR "."
#endif

namespace indexcache {
namespace {

namespace fs = std::filesystem;
using namespace cuda_test;

constexpr double kScoreTol = 5e-2;   // index scores and near-tie swaps, relative to the row's max |score|
constexpr double kRowTol = 2e-2;     // logits relative L2 per row
constexpr double kMedianTol = 1e-2;  // median of the per-row relative L2
constexpr double kMaxTol = 0.25;     // no row beyond this
constexpr int kChunk = 7;            // the chunked prefill of (e): several chunks, one ragged

struct Case {
  std::string model_dir, expected, plan;
  bool trained = false;  // dsa-mini: a trained model (clear routing margins); golden models: random
  std::string name() const { return fs::path(model_dir).filename().string() + "_" + plan; }
};

std::vector<Case> cases_in(const fs::path& model_dir, const fs::path& fixture_dir) {
  std::vector<Case> out;
  if (!fs::is_directory(model_dir) || !fs::is_directory(fixture_dir)) return out;
  for (const auto& e : fs::directory_iterator(fixture_dir)) {
    const std::string f = e.path().filename().string();
    const std::string pre = "expected.", suf = ".safetensors";
    if (f.rfind(pre, 0) != 0 || f.size() <= pre.size() + suf.size() ||
        f.compare(f.size() - suf.size(), suf.size(), suf) != 0)
      continue;
    out.push_back({model_dir.string(), e.path().string(), f.substr(pre.size(), f.size() - pre.size() - suf.size())});
  }
  std::sort(out.begin(), out.end(), [](const Case& a, const Case& b) { return a.expected < b.expected; });
  return out;
}

std::vector<Case> golden_cases() {
  std::vector<Case> all;
  const fs::path root = fs::path(INDEXCACHE_SOURCE_DIR) / "tests/data/golden";
  if (!fs::is_directory(root)) return all;
  std::vector<fs::path> dirs;
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory() && fs::exists(e.path() / "config.json")) dirs.push_back(e.path());
  std::sort(dirs.begin(), dirs.end());
  for (const auto& d : dirs)
    for (auto& c : cases_in(d, d)) all.push_back(c);
  return all;
}

std::vector<Case> embedded_cases() {
  const fs::path root(INDEXCACHE_SOURCE_DIR);
  auto cases = cases_in(root / "models/dsa-mini", root / "tests/data/model_golden");
  for (Case& c : cases) c.trained = true;
  return cases;
}

template <typename T>
std::vector<T> read(const SafetensorsFile& f, const std::string& name) {
  const TensorInfo* t = f.find(name);
  if (!t) throw std::runtime_error(f.path() + " lacks " + name);
  std::vector<T> v(static_cast<size_t>(t->numel()));
  if (t->nbytes != v.size() * sizeof(T)) throw std::runtime_error(f.path() + ": unexpected dtype of " + name);
  std::memcpy(v.data(), f.data(*t), t->nbytes);
  return v;
}

struct Fixture {
  std::vector<int32_t> ids, rows;  // rows: the captured positions (every position when absent)
  int T = 0, V = 0, k = 0;         // k: the fixture's top-k width (min(index_topk, T))
  bool all_rows = false;
  std::vector<float> logits;                     // [rows][V]
  std::vector<std::vector<float>> scores;        // per layer [rows][T] (F layers of the plan)
  std::vector<std::vector<int32_t>> topk;        // per layer [rows][k]
};

Fixture load_fixture(const Case& c, const ModelSpec& spec, const IndexPlan& plan) {
  auto f = SafetensorsFile::open(c.expected);
  Fixture x;
  x.ids = read<int32_t>(*f, "input_ids");
  x.T = static_cast<int>(x.ids.size());
  x.V = spec.vocab_size;
  if (f->find("rows")) {
    x.rows = read<int32_t>(*f, "rows");
  } else {
    for (int t = 0; t < x.T; ++t) x.rows.push_back(t);
  }
  x.all_rows = static_cast<int>(x.rows.size()) == x.T;
  x.logits = read<float>(*f, "logits");
  x.scores.resize(spec.num_layers);
  x.topk.resize(spec.num_layers);
  for (int l = 0; l < spec.num_layers; ++l) {
    if (plan.is_full(l)) x.scores[l] = read<float>(*f, "index_scores." + std::to_string(l));
    x.topk[l] = read<int32_t>(*f, "topk." + std::to_string(l));
  }
  x.k = static_cast<int>(x.topk[0].size() / x.rows.size());
  return x;
}

int argmax(const float* x, int n) { return static_cast<int>(std::max_element(x, x + n) - x); }

struct LogitStats {
  double median = 0, max = 0;
  int over = 0, argmax_bad = 0, rows = 0;
};

LogitStats compare_logits(const std::vector<float>& got, const Fixture& fx) {
  LogitStats s;
  std::vector<double> errs;
  const int V = fx.V;
  for (size_t i = 0; i < fx.rows.size(); ++i) {
    const float* a = got.data() + i * V;
    const float* b = fx.logits.data() + i * V;
    const double e = rel_l2(a, b, V);
    errs.push_back(e);
    if (e > kRowTol) ++s.over;
    // Argmax on rows with a clear top-2 margin (5 % of the row's range) that are within tolerance.
    std::vector<float> sorted(b, b + V);
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<>());
    const float range = sorted[0] - *std::min_element(b, b + V);
    if (e <= kRowTol && sorted[0] - sorted[1] > 0.05f * range && argmax(a, V) != argmax(b, V)) ++s.argmax_bad;
  }
  s.rows = static_cast<int>(errs.size());
  std::vector<double> sorted = errs;
  std::sort(sorted.begin(), sorted.end());
  s.median = sorted[sorted.size() / 2];
  s.max = sorted.back();
  return s;
}

bool logits_ok(const LogitStats& s) {
  return s.median < kMedianTol && s.over * 4 <= s.rows && s.max < kMaxTol && s.argmax_bad == 0;
}

std::string describe(const LogitStats& s) {
  char b[160];
  std::snprintf(b, sizeof b, "rel L2 median %.2e max %.2e, rows over %.0e: %d/%d, argmax mismatches %d", s.median,
                s.max, kRowTol, s.over, s.rows, s.argmax_bad);
  return b;
}

// The fixture's selections of every layer as forced selections [T][k] (fixture rows must be all).
std::vector<std::vector<int32_t>> forced_from(const Fixture& fx) { return fx.topk; }

// (a): scores of F layers vs the fixture. Returns the worst error / row max.
// Per F layer and captured row, max |gpu - ref| over the causal part (keys <= the row's position;
// beyond it the fixtures hold transformers' mask value, the GPU -inf, and neither is read).
using ScoreErrors = std::vector<std::vector<double>>;  // [layer][row], empty for S layers

// (a): asserted on layers < assert_below; returns the worst error / row max over those layers and
// fills `errs` for every F layer.
double check_scores(const gpu::PrefillDebug& d, const Fixture& fx, const IndexPlan& plan, int assert_below,
                    const std::string& what, ScoreErrors* errs, double* worst_unasserted) {
  double worst = 0;
  errs->assign(plan.num_layers(), {});
  for (int l = 0; l < plan.num_layers(); ++l) {
    if (!plan.is_full(l)) continue;
    (*errs)[l].assign(fx.rows.size(), 0.0);
    // bf16 rounding scales with the operands' magnitude, about uniform across the rows of a layer;
    // a row whose scores cancel to small values is judged against the layer's magnitude.
    double layer_max = 0;
    for (size_t i = 0; i < fx.rows.size(); ++i)
      for (int s = 0; s <= fx.rows[i] && s < fx.T; ++s)
        layer_max = std::max(layer_max, std::fabs(double(fx.scores[l][i * fx.T + s])));
    for (size_t i = 0; i < fx.rows.size(); ++i) {
      const int t = fx.rows[i];
      const float* g = d.index_scores[l].data() + i * fx.T;
      const float* r = fx.scores[l].data() + i * fx.T;
      double rowmax = 0, err = 0;
      bool finite = true;
      for (int s = 0; s <= t && s < fx.T; ++s) {
        finite = finite && std::isfinite(g[s]);
        rowmax = std::max(rowmax, std::fabs(double(r[s])));
        err = std::max(err, std::fabs(double(g[s]) - r[s]));
      }
      EXPECT_TRUE(finite) << what << " layer " << l << " row " << t << ": non-finite score at a visible key";
      (*errs)[l][i] = err;
      const double rel = err / std::max(layer_max, 1e-30);
      if (l < assert_below) {
        worst = std::max(worst, rel);
        EXPECT_TRUE(rel <= kScoreTol) << what << " layer " << l << " row " << t << ": index score error " << err
                                      << " vs layer max " << layer_max << " (row max " << rowmax << ")";
      } else {
        *worst_unasserted = std::max(*worst_unasserted, rel);
      }
    }
  }
  return worst;
}

// (b): selections as sets. Returns the number of (layer, row) pairs that differ (allowed near-ties).
int check_selections(const gpu::PrefillDebug& d, const Fixture& fx, const IndexPlan& plan, int topk,
                     const ScoreErrors& errs, int assert_below, const std::string& what) {
  int differing = 0;
  for (int l = 0; l < plan.num_layers(); ++l) {
    const int src = plan.source_layer(l);
    for (size_t i = 0; i < fx.rows.size(); ++i) {
      const int t = fx.rows[i];
      std::set<int> a, b;
      int valid = 0;
      for (int j = 0; j < topk; ++j) {
        const int x = d.topk[l][i * topk + j];
        if (x < 0) continue;
        ++valid;
        EXPECT_TRUE(x <= t) << what << " layer " << l << " row " << t << ": selected future token " << x;
        a.insert(x);
      }
      EXPECT_EQ(valid, static_cast<int>(a.size())) << what << " layer " << l << " row " << t << ": duplicates";
      EXPECT_EQ(static_cast<int>(a.size()), std::min(fx.k, t + 1)) << what << " layer " << l << " row " << t;
      for (int j = 0; j < fx.k; ++j) {
        const int y = fx.topk[l][i * fx.k + j];
        if (y >= 0 && y <= t) b.insert(y);
      }
      if (a == b) continue;
      ++differing;
      const float* row = fx.scores[src].data() + i * fx.T;
      std::vector<float> sorted(row, row + t + 1);
      std::sort(sorted.begin(), sorted.end(), std::greater<>());
      const float kth = sorted[std::min(fx.k, t + 1) - 1];
      double rowmax = 0;
      for (int s = 0; s <= t; ++s) rowmax = std::max(rowmax, std::fabs(double(row[s])));
      std::vector<int> diff;
      std::set_symmetric_difference(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(diff));
      if (src >= assert_below) continue;
      const double tol = 2.0 * errs[src][i] + 1e-6 * rowmax;
      for (int s : diff)
        EXPECT_TRUE(s <= t && std::fabs(double(row[s]) - kth) <= tol)
            << what << " layer " << l << " row " << t << ": token " << s << " (score " << row[s] << ", k-th " << kth
            << ") differs by more than twice the row's score error " << errs[src][i];
    }
  }
  return differing;
}

void run_case(const Case& c) {
  const ModelSpec spec = load_model_spec(c.model_dir);
  const IndexPlan plan = IndexPlan::from_pattern(c.plan, spec.num_layers);
  const Fixture fx = load_fixture(c, spec, plan);
  auto model = gpu::SyntheticGpuModel::from_checkpoint(c.model_dir, fx.T + 1);
  const std::string what = c.name();
  const int topk = spec.index_topk;
  std::printf("[cuda-e2e] %s: T %d, k %d, rows %zu, tensor-core indexer %d, attention %d\n", what.c_str(), fx.T,
              fx.k, fx.rows.size(), model->uses_tensor_core_indexer(), model->uses_tensor_core_attention());

  gpu::RunOptions one;
  one.chunk = fx.T;
  one.instrument = false;

  // Free-running, one chunk: (a) without forcing when rows are partial, (b), (d).
  gpu::PrefillDebug fr;
  fr.rows = fx.rows;
  const gpu::PhaseResult pr = model->prefill_ids(fx.ids, plan, one, &fr);
  const std::vector<float> full_last = model->last_logits();
  std::printf("[cuda-ops] e2e %s prefill %d tokens (with captures): %.3f ms\n", what.c_str(), fx.T, pr.seconds * 1e3);
  // Golden models: assertions stop at the first MoE layer (its indexer runs before its MLP); the
  // trained dsa-mini: every layer (see the header).
  int first_moe = spec.num_layers;
  for (int l = 0; l < spec.num_layers; ++l)
    if (spec.layer_is_moe[l]) {
      first_moe = l;
      break;
    }
  const int assert_below = c.trained ? spec.num_layers : first_moe + 1;
  ScoreErrors free_errs;
  double free_unasserted = 0;
  // Free-running, a layer's scores depend on every upstream selection, and near-ties there flip
  // under bf16; only layer 0 (scores from the embeddings) is asserted.
  const double free_worst = check_scores(fr, fx, plan, 1, what + " free", &free_errs, &free_unasserted);
  const int differing = check_selections(fr, fx, plan, topk, free_errs, assert_below, what + " free");
  const LogitStats fs = compare_logits(fr.logits, fx);
  std::printf("[cuda-e2e] %s free-running: index scores worst %.2e of row max (asserted layers), %.2e (others); "
              "%d (layer, row) selections differ; logits %s\n",
              what.c_str(), free_worst, free_unasserted, differing, describe(fs).c_str());
  if (c.trained) {
    EXPECT_TRUE(logits_ok(fs)) << what << " free-running logits: " << describe(fs);
  }
  EXPECT_TRUE(fs.max < INFINITY) << what << ": NaN / inf logits";

  // Teacher forcing (fixtures with every row): (a), (c), then (e) under the same forcing.
  if (fx.all_rows) {
    gpu::PrefillDebug forced;
    forced.rows = fx.rows;
    forced.forced_topk = forced_from(fx);
    model->prefill_ids(fx.ids, plan, one, &forced);
    ScoreErrors forced_errs;
    double forced_unasserted = 0;
    const double worst =
        check_scores(forced, fx, plan, assert_below, what + " forced", &forced_errs, &forced_unasserted);
    const LogitStats s = compare_logits(forced.logits, fx);
    std::printf("[cuda-e2e] %s forced: index scores worst %.2e of row max (layers < %d, asserted), %.2e (later "
                "layers, after a MoE routing decision); logits %s\n",
                what.c_str(), worst, assert_below, forced_unasserted, describe(s).c_str());

    gpu::RunOptions chunked = one;
    chunked.chunk = kChunk;
    gpu::PrefillDebug fc;
    fc.rows = fx.rows;
    fc.forced_topk = forced.forced_topk;
    model->prefill_ids(fx.ids, plan, chunked, &fc);
    double worst_chunk = 0;
    for (size_t i = 0; i < fx.rows.size(); ++i)
      worst_chunk = std::max(worst_chunk, rel_l2(fc.logits.data() + i * fx.V, forced.logits.data() + i * fx.V, fx.V));
    std::printf("[cuda-e2e] %s chunk %d vs one chunk (forced): worst rel L2 %.2e\n", what.c_str(), kChunk, worst_chunk);
    EXPECT_TRUE(worst_chunk <= kRowTol) << what << ": chunked prefill differs, rel L2 " << worst_chunk;
  } else {
    // (e) free-running: chunk 16 vs one chunk on the captured rows.
    gpu::RunOptions chunked = one;
    chunked.chunk = 16;
    gpu::PrefillDebug fc;
    fc.rows = fx.rows;
    model->prefill_ids(fx.ids, plan, chunked, &fc);
    double worst_chunk = 0;
    for (size_t i = 0; i < fx.rows.size(); ++i)
      worst_chunk = std::max(worst_chunk, rel_l2(fc.logits.data() + i * fx.V, fr.logits.data() + i * fx.V, fx.V));
    std::printf("[cuda-e2e] %s chunk 16 vs one chunk (free-running): worst rel L2 %.2e\n", what.c_str(), worst_chunk);
    EXPECT_TRUE(worst_chunk <= kRowTol) << what << ": chunked prefill differs, rel L2 " << worst_chunk;
  }

  // (f) prefill T-1, decode the last token, vs the full prefill's last row.
  std::vector<int32_t> head(fx.ids.begin(), fx.ids.end() - 1);
  model->prefill_ids(head, plan, one);
  model->decode_id(fx.ids.back(), plan);
  const std::vector<float> dec = model->last_logits();
  const double e = rel_l2(dec.data(), full_last.data(), fx.V);
  std::printf("[cuda-e2e] %s decode step vs prefill last row: rel L2 %.2e\n", what.c_str(), e);
  // GEMV vs GEMM rounding through every layer: asserted on the trained model; on the random golden
  // models a MoE routing choice can flip between the two (reported).
  if (c.trained) {
    EXPECT_TRUE(e <= kRowTol) << what << ": decode differs from prefill, rel L2 " << e;
  }
}

TEST(CudaE2E, GoldenModelsMatchTransformers) {
  REQUIRE_GPU();
  const auto cases = golden_cases();
  ASSERT_TRUE(cases.size() >= 12u) << "golden fixtures missing under " << INDEXCACHE_SOURCE_DIR;
  for (const Case& c : cases) run_case(c);
}

TEST(CudaE2E, EmbeddedModelMatchesTransformers) {
  REQUIRE_GPU();
  const auto cases = embedded_cases();
  ASSERT_TRUE(cases.size() >= 2u) << "models/dsa-mini or tests/data/model_golden missing under "
                                  << INDEXCACHE_SOURCE_DIR;
  for (const Case& c : cases) run_case(c);
}

// A checkpoint that is not there is a clear error, not a crash (needs the CUDA runtime only for
// the model's allocations, which come after the config is read).
TEST(CudaE2E, MissingCheckpointIsAnError) {
  REQUIRE_GPU();
  bool threw = false;
  try {
    gpu::SyntheticGpuModel::from_checkpoint(std::string(INDEXCACHE_SOURCE_DIR) + "/no/such/model", 16);
  } catch (const std::exception& e) {
    threw = std::string(e.what()).find("no/such/model") != std::string::npos;
  }
  EXPECT_TRUE(threw);
}

}  // namespace
}  // namespace indexcache
