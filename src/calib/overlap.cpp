#include "indexcache/overlap.h"

#include <algorithm>

namespace indexcache {

OverlapAccumulator::OverlapAccumulator(int layers, int k)
    : layers_(layers), k_(k), sum_(static_cast<size_t>(layers) * layers, 0.0) {}

void OverlapAccumulator::add(const std::vector<std::vector<int32_t>>& topk, int tokens) {
  std::vector<std::vector<int32_t>> sorted(layers_);
  for (int t = k_; t < tokens; ++t) {  // query t has t + 1 > k candidates
    for (int l = 0; l < layers_; ++l) {
      const int32_t* row = topk[l].data() + static_cast<size_t>(t) * k_;
      sorted[l].assign(row, row + k_);
      std::sort(sorted[l].begin(), sorted[l].end());
    }
    for (int i = 0; i < layers_; ++i) {
      for (int j = i; j < layers_; ++j) {
        std::vector<int32_t> common;
        std::set_intersection(sorted[i].begin(), sorted[i].end(), sorted[j].begin(), sorted[j].end(),
                              std::back_inserter(common));
        const double o = static_cast<double>(common.size()) / k_;
        sum_[static_cast<size_t>(i) * layers_ + j] += o;
        if (i != j) sum_[static_cast<size_t>(j) * layers_ + i] += o;
      }
    }
    ++queries_;
  }
}

std::vector<std::vector<double>> OverlapAccumulator::matrix() const {
  std::vector<std::vector<double>> m(layers_, std::vector<double>(layers_, 0.0));
  for (int i = 0; i < layers_; ++i)
    for (int j = 0; j < layers_; ++j)
      m[i][j] = queries_ ? sum_[static_cast<size_t>(i) * layers_ + j] / queries_ : (i == j ? 1.0 : 0.0);
  return m;
}

}  // namespace indexcache
