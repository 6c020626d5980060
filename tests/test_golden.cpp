// The engine against transformers 5.17: logits within 1e-4 relative, selections equal as sets per
// query (swaps allowed only between scores tied within 1e-5 relative), for every golden model and
// plan. Fixtures: tests/data/golden (scripts/make_goldens.py).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>

#include "backend/backend.h"
#include "golden_fixture.h"
#include "indexcache/model.h"
#include "indexcache/safetensors.h"
#include "test_util.h"

namespace indexcache {
namespace {

using test::GoldenCase;

template <typename T>
std::vector<T> read_tensor(const SafetensorsFile& f, const std::string& name, DType dtype) {
  const TensorInfo* t = f.find(name);
  if (!t) throw std::runtime_error("fixture lacks " + name);
  if (t->dtype != dtype) throw std::runtime_error("fixture dtype of " + name);
  std::vector<T> v(static_cast<size_t>(t->numel()));
  std::memcpy(v.data(), f.data(*t), t->nbytes);
  return v;
}

// max |a - b| / max |b|, NaN-aware (a NaN anywhere gives +inf).
double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return INFINITY;
    num = std::max(num, std::fabs(static_cast<double>(a[i]) - b[i]));
    den = std::max(den, std::fabs(static_cast<double>(b[i])));
  }
  return num / den;
}

class GoldenTest : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(GoldenTest, LogitsAndSelectionsMatchTransformers) {
  const GoldenCase& c = GetParam();
  auto expected = SafetensorsFile::open(c.expected_path);
  const auto ids = read_tensor<int32_t>(*expected, "input_ids", DType::kI32);
  const auto ref_logits = read_tensor<float>(*expected, "logits", DType::kF32);

  const ModelSpec spec = load_model_spec(c.model_dir);
  const IndexPlan plan = IndexPlan::parse(c.plan, spec);
  auto model = Model::load(c.model_dir, LoadOptions::for_plan(plan));
  auto be = make_cpu_backend();
  PrefillOptions po;
  po.capture_index_scores = true;
  po.query_block = 7;  // several indexer blocks, one ragged
  const PrefillResult r = prefill(*model, plan, ids, *be, po);

  ASSERT_EQ(r.logits.size(), ref_logits.size());
  const double err = relative_error(r.logits, ref_logits);
  EXPECT_LE(err, 1e-4) << c.name() << ": logits relative error " << err;

  const int T = r.tokens, k = r.k;
  for (int l = 0; l < spec.num_layers; ++l) {
    const auto ref = read_tensor<int32_t>(*expected, "topk." + std::to_string(l), DType::kI32);
    ASSERT_EQ(ref.size(), static_cast<size_t>(T) * k);
    const int src = plan.source_layer(l);
    const auto ref_scores = read_tensor<float>(*expected, "index_scores." + std::to_string(src), DType::kF32);
    // Our own scores of the source layer agree with transformers' (finite entries).
    if (l == src) {
      std::vector<float> ours, theirs;
      for (size_t i = 0; i < ref_scores.size(); ++i) {
        ASSERT_EQ(std::isinf(ref_scores[i]), std::isinf(r.index_scores[l][i])) << "layer " << l << " entry " << i;
        if (std::isfinite(ref_scores[i])) {
          ours.push_back(r.index_scores[l][i]);
          theirs.push_back(ref_scores[i]);
        }
      }
      EXPECT_LE(relative_error(ours, theirs), 1e-4) << c.name() << " layer " << l << " index scores";
    }
    int swaps = 0;
    for (int t = 0; t < T; ++t) {
      std::set<int> a, b;  // valid positions only: transformers pads short rows with masked ones
      for (int i = 0; i < k; ++i) {
        const int x = r.topk[l][static_cast<size_t>(t) * k + i], y = ref[static_cast<size_t>(t) * k + i];
        if (x >= 0 && x <= t) a.insert(x);
        if (y >= 0 && y <= t) b.insert(y);
      }
      EXPECT_EQ(a.size(), static_cast<size_t>(std::min(k, t + 1))) << "layer " << l << " query " << t;
      if (a == b) continue;
      // Differences are allowed only between scores tied (within 1e-5 relative) with the k-th.
      const float* row = ref_scores.data() + static_cast<size_t>(t) * T;
      float rowmax = 0;
      for (int s = 0; s <= t; ++s) rowmax = std::max(rowmax, std::fabs(row[s]));
      std::vector<float> sorted(row, row + t + 1);
      std::sort(sorted.begin(), sorted.end(), std::greater<>());
      const float kth = sorted[k - 1];
      std::vector<int> diff;
      std::set_symmetric_difference(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(diff));
      for (int s : diff) {
        EXPECT_LE(std::fabs(row[s] - kth), 1e-5 * rowmax)
            << c.name() << " layer " << l << " query " << t << ": token " << s << " is not a near-tie";
      }
      ++swaps;
    }
    EXPECT_LE(swaps, T / 10) << "too many tie swaps in layer " << l;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenTest, ::testing::ValuesIn(test::golden_cases()),
                         [](const auto& info) { return info.param.name(); });
// Block-FP8 checkpoints as they ship (tests/data/golden_fp8): dequantized at load, the same bounds.
INSTANTIATE_TEST_SUITE_P(Fp8, GoldenTest, ::testing::ValuesIn(test::golden_cases("golden_fp8")),
                         [](const auto& info) { return info.param.name(); });

TEST(GoldenFixtures, Fp8CoverBothFamiliesAndTwoPlansEach) {
  std::map<std::string, std::set<std::string>> plans;
  for (const auto& c : test::golden_cases("golden_fp8")) {
    const ModelSpec s = load_model_spec(c.model_dir);
    EXPECT_TRUE(s.quant.fp8) << c.model_dir;
    EXPECT_EQ(s.num_mtp_layers, 1) << c.model_dir;
    plans[s.model_type].insert(c.plan);
  }
  ASSERT_EQ(plans.size(), 2u);
  for (const auto& [family, p] : plans) EXPECT_GE(p.size(), 2u) << family;
}

// Each bad block-FP8 checkpoint of tests/data/golden_fp8 (one defect beside the valid ok_tiny):
// exit 2 and a one-line error naming the key or tensor.
TEST(GoldenCli, BadFp8CheckpointsAreClearErrors) {
  const std::string root = std::string(INDEXCACHE_TEST_DATA) + "/golden_fp8/";
  const std::string ids = test::make_temp_dir("fp8ids") + "/ids.txt";
  {
    std::FILE* f = std::fopen(ids.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs("1 2 3 4 5", f);
    std::fclose(f);
  }
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"bad_scale_shape", {"gate_proj.weight_scale_inv", "block grid"}},
      {"bad_missing_scale", {"down_proj.weight", "scale", "missing"}},
      {"bad_scale_beside_bf16", {"o_proj.weight", "BF16"}},
      {"bad_quant_method", {"quantization_config.quant_method", "gptq"}},
      {"bad_fmt", {"quantization_config.fmt", "e5m2"}},
      {"bad_nan_scale", {"q_b_proj.weight_scale_inv", "nan"}},
      {"bad_inf_scale", {"up_proj.weight_scale_inv", "inf"}},
      {"bad_block_size", {"quantization_config.weight_block_size", "[128, 128]"}},
  };
  const std::string out = test::make_temp_dir("fp8dump") + "/out.safetensors";
  for (const auto& [dir, needles] : cases) {
    auto res = test::run_cli("dump -m " + root + dir + " --ids " + ids + " --out " + out);
    EXPECT_EQ(res.exit_code, 2) << dir << ": " << res.output;
    EXPECT_EQ(std::count(res.output.begin(), res.output.end(), '\n'), 1) << dir << ": " << res.output;
    for (const auto& n : needles) EXPECT_NE(res.output.find(n), std::string::npos) << dir << ": " << res.output;
  }
  auto ok = test::run_cli("dump -m " + root + "ok_tiny --ids " + ids + " --out " + out);
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
}

TEST(GoldenFixtures, CoverBothFamiliesAndThreePlansEach) {
  std::map<std::string, std::set<std::string>> plans;
  for (const auto& c : test::golden_cases()) {
    const ModelSpec s = load_model_spec(c.model_dir);
    plans[s.model_type].insert(c.plan);
  }
  ASSERT_EQ(plans.size(), 2u);
  for (const auto& [family, p] : plans) EXPECT_GE(p.size(), 3u) << family;
}

// The CLI end to end: `dump` writes what transformers computed, `info` reads every model.
TEST(GoldenCli, DumpReproducesTransformers) {
  for (const auto& c : test::golden_cases()) {
    const std::string out = test::make_temp_dir("dump") + "/out.safetensors";
    auto res = test::run_cli("dump -m " + c.model_dir + " --ids " + c.model_dir + "/ids.txt --out " + out +
                             " --plan " + c.plan);
    ASSERT_EQ(res.exit_code, 0) << res.output;
    auto got = SafetensorsFile::open(out);
    auto expected = SafetensorsFile::open(c.expected_path);
    const auto logits = read_tensor<float>(*got, "logits", DType::kF32);
    const auto ref = read_tensor<float>(*expected, "logits", DType::kF32);
    ASSERT_EQ(logits.size(), ref.size());
    EXPECT_LE(relative_error(logits, ref), 1e-4) << c.name();
    const int layers = load_model_spec(c.model_dir).num_layers;
    for (int l = 0; l < layers; ++l) EXPECT_NE(got->find("topk." + std::to_string(l)), nullptr);
  }
}

TEST(GoldenCli, InfoWorksOnEveryModel) {
  const auto dirs = test::golden_model_dirs();
  ASSERT_FALSE(dirs.empty());
  for (const auto& dir : dirs) {
    auto res = test::run_cli("info -m " + dir);
    EXPECT_EQ(res.exit_code, 0) << res.output;
    EXPECT_NE(res.output.find("plan"), std::string::npos);
    EXPECT_NE(res.output.find("parameters"), std::string::npos);
  }
}

}  // namespace
}  // namespace indexcache
