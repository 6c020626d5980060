// Cross-layer overlap of top-k selections (IndexCache paper metric): for layers i, j the mean over
// queries of |T_i intersect T_j| / k, counting only queries that had more than k candidates.
#pragma once

#include <cstdint>
#include <vector>

namespace indexcache {

class OverlapAccumulator {
 public:
  OverlapAccumulator(int layers, int k);
  // Adds one sequence: selections per layer [tokens, k] (every layer's own, i.e. an all-F run).
  void add(const std::vector<std::vector<int32_t>>& topk, int tokens);
  // N x N matrix of mean overlaps (1 on the diagonal); 0 where no query qualified.
  std::vector<std::vector<double>> matrix() const;
  int64_t queries() const { return queries_; }

 private:
  int layers_, k_;
  int64_t queries_ = 0;
  std::vector<double> sum_;  // [layers * layers]
};

}  // namespace indexcache
