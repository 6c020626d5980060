// Language-model loss of a model under an IndexPlan, on batches of token ids.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace indexcache {

// Sum of -log p(ids[t+1] | ids[..t]) over t = 0..T-2 from logits [T, vocab], and the count.
struct LossSum {
  double nll = 0;
  int64_t tokens = 0;
  double mean() const { return tokens ? nll / tokens : 0; }
  LossSum& operator+=(const LossSum& o) {
    nll += o.nll;
    tokens += o.tokens;
    return *this;
  }
};
LossSum next_token_loss(std::span<const float> logits, std::span<const int32_t> ids, int vocab);

// Cuts a token stream into windows of `ctx` tokens (the last partial window kept if it has at
// least 2 tokens), at most `max_windows` of them (0: all).
std::vector<std::vector<int32_t>> make_windows(std::span<const int32_t> tokens, int ctx, int max_windows = 0);

}  // namespace indexcache
