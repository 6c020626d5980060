// Generation over a Session: chunked prefill of the prompt, then decode token by token until
// max_new_tokens or an end-of-sequence id.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "indexcache/sampler.h"

namespace indexcache {

class Session;

struct GenerateOptions {
  int max_new_tokens = 64;
  int chunk = 0;  // prefill chunk size; 0: the whole prompt at once
  SamplerConfig sampler;
  std::vector<int64_t> eos_ids;
};

struct GenerateStats {
  int prompt_tokens = 0;
  int new_tokens = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;  // for new_tokens - 1 decode steps (the first token comes from prefill)
  bool stopped_at_eos = false;
  double prefill_tokens_per_second() const;
  double decode_tokens_per_second() const;
};

// Calls on_token(id) for each generated token (the EOS token too); returns false to stop early.
GenerateStats generate(Session& session, std::span<const int32_t> prompt, const GenerateOptions& options,
                       const std::function<bool(int32_t)>& on_token);

}  // namespace indexcache
