// The embedded model (models/dsa-mini) against transformers 5.17 in f32 on held-out text
// (tests/data/model_golden, made by scripts/make_model_golden.py): logits within bf16 tolerance,
// selections equal as sets per query except swaps between scores tied within 1e-5 relative.
// The fixture breaks exact score ties (common after the indexer's ReLU) towards the lower token
// index, the engine's convention; see scripts/make_model_golden.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>

#include "backend/backend.h"
#include "indexcache/model.h"
#include "indexcache/safetensors.h"
#include "test_util.h"

namespace indexcache {
namespace {

const std::string kModel = std::string(INDEXCACHE_TEST_DATA) + "/../../models/dsa-mini";
const std::string kFixtures = std::string(INDEXCACHE_TEST_DATA) + "/model_golden";

template <typename T>
std::vector<T> read(const SafetensorsFile& f, const std::string& name) {
  const TensorInfo* t = f.find(name);
  if (!t) throw std::runtime_error("fixture lacks " + name);
  std::vector<T> v(static_cast<size_t>(t->numel()));
  std::memcpy(v.data(), f.data(*t), t->nbytes);
  return v;
}

class ModelGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelGolden, MatchesTransformersOnHeldOutText) {
  const std::string pattern = GetParam();
  auto f = SafetensorsFile::open(kFixtures + "/expected." + pattern + ".safetensors");
  const auto ids = read<int32_t>(*f, "input_ids");
  const auto rows = read<int32_t>(*f, "rows");
  const auto ref_logits = read<float>(*f, "logits");
  auto model = Model::load(kModel);
  const IndexPlan plan = IndexPlan::from_pattern(pattern, model->spec().num_layers);
  auto be = make_cpu_backend();
  PrefillOptions po;
  po.capture_index_scores = true;
  const PrefillResult r = prefill(*model, plan, ids, *be, po);
  const int T = r.tokens, V = r.vocab, k = r.k;
  ASSERT_EQ(ref_logits.size(), rows.size() * V);

  double num = 0, den = 0;
  for (size_t i = 0; i < rows.size(); ++i)
    for (int v = 0; v < V; ++v) {
      const float a = r.logits[static_cast<size_t>(rows[i]) * V + v], b = ref_logits[i * V + v];
      ASSERT_FALSE(std::isnan(a));
      num = std::max(num, std::fabs(static_cast<double>(a) - b));
      den = std::max(den, std::fabs(static_cast<double>(b)));
    }
  EXPECT_LE(num / den, 1e-2) << "logits relative error (bf16 tolerance)";
  RecordProperty("logits_relative_error", std::to_string(num / den));

  int swapped_rows = 0;
  for (int l = 0; l < model->spec().num_layers; ++l) {
    const auto ref = read<int32_t>(*f, "topk." + std::to_string(l));
    const int src = plan.source_layer(l);
    const auto scores = read<float>(*f, "index_scores." + std::to_string(src));
    if (l == src) {
      double e = 0, m = 0;
      for (size_t i = 0; i < rows.size(); ++i)
        for (int x = 0; x <= rows[i]; ++x) {
          e = std::max(e, std::fabs(double(r.index_scores[l][static_cast<size_t>(rows[i]) * T + x]) - scores[i * T + x]));
          m = std::max(m, std::fabs(double(scores[i * T + x])));
        }
      EXPECT_LE(e / m, 1e-4) << "layer " << l << " index scores";
    }
    for (size_t i = 0; i < rows.size(); ++i) {
      const int t = rows[i];
      std::set<int> a, b;
      for (int j = 0; j < k; ++j) {
        const int x = r.topk[l][static_cast<size_t>(t) * k + j], y = ref[i * k + j];
        if (x >= 0 && x <= t) a.insert(x);
        if (y >= 0 && y <= t) b.insert(y);
      }
      if (a == b) continue;
      ++swapped_rows;
      const float* row = scores.data() + i * T;
      std::vector<float> sorted(row, row + t + 1);
      std::sort(sorted.begin(), sorted.end(), std::greater<>());
      const float kth = sorted[std::min(k, t + 1) - 1];
      float rowmax = 0;
      for (int s = 0; s <= t; ++s) rowmax = std::max(rowmax, std::fabs(row[s]));
      std::vector<int> diff;
      std::set_symmetric_difference(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(diff));
      for (int s : diff)
        EXPECT_LE(std::fabs(row[s] - kth), 1e-5 * rowmax) << "layer " << l << " query " << t << " token " << s;
    }
  }
  RecordProperty("rows_with_tie_swaps", swapped_rows);
}

std::vector<std::string> plans() {
  std::vector<std::string> p;
  if (!std::filesystem::is_directory(kFixtures)) return p;
  for (const auto& e : std::filesystem::directory_iterator(kFixtures)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("expected.", 0) == 0) p.push_back(n.substr(9, n.size() - 9 - 12));
  }
  std::sort(p.begin(), p.end());
  return p;
}

INSTANTIATE_TEST_SUITE_P(Plans, ModelGolden, ::testing::ValuesIn(plans()),
                         [](const auto& info) { return info.param; });

TEST(ModelGoldenFixtures, Present) { EXPECT_GE(plans().size(), 2u); }

}  // namespace
}  // namespace indexcache
