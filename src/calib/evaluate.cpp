#include "indexcache/evaluate.h"

#include <algorithm>
#include <cmath>

#include "model/logits_check.h"

namespace indexcache {

LossSum next_token_loss(std::span<const float> logits, std::span<const int32_t> ids, int vocab) {
  LossSum s;
  const int T = static_cast<int>(ids.size());
  for (int t = 0; t + 1 < T; ++t) {
    const float* row = logits.data() + static_cast<size_t>(t) * vocab;
    check_logits_finite(std::span(row, static_cast<size_t>(vocab)), vocab, t);  // logits of any source
    const float mx = *std::max_element(row, row + vocab);
    double z = 0;
    for (int v = 0; v < vocab; ++v) z += std::exp(static_cast<double>(row[v]) - mx);
    s.nll += std::log(z) + mx - row[ids[t + 1]];
    ++s.tokens;
  }
  return s;
}

std::vector<std::vector<int32_t>> make_windows(std::span<const int32_t> tokens, int ctx, int max_windows) {
  std::vector<std::vector<int32_t>> out;
  for (size_t p = 0; p + 1 < tokens.size(); p += ctx) {
    const size_t n = std::min<size_t>(ctx, tokens.size() - p);
    if (n < 2) break;
    out.emplace_back(tokens.begin() + p, tokens.begin() + p + n);
    if (max_windows > 0 && static_cast<int>(out.size()) >= max_windows) break;
  }
  return out;
}

}  // namespace indexcache
