#include "indexcache/generate.h"

#include <algorithm>
#include <chrono>

#include "indexcache/error.h"
#include "indexcache/session.h"

namespace indexcache {

double GenerateStats::prefill_tokens_per_second() const {
  return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0;
}
double GenerateStats::decode_tokens_per_second() const {
  return decode_seconds > 0 && new_tokens > 1 ? (new_tokens - 1) / decode_seconds : 0;
}

GenerateStats generate(Session& session, std::span<const int32_t> prompt, const GenerateOptions& o,
                       const std::function<bool(int32_t)>& on_token) {
  using clock = std::chrono::steady_clock;
  if (prompt.empty()) throw_bad_input("prompt", "empty");
  if (o.max_new_tokens < 0) throw_bad_input("-n", "must be >= 0");
  Sampler sampler(o.sampler);
  GenerateStats st;
  st.prompt_tokens = static_cast<int>(prompt.size());
  ForwardOptions fo;
  fo.logits = LogitsWanted::kNone;
  const int chunk = o.chunk > 0 ? o.chunk : static_cast<int>(prompt.size());
  // The cache for the prompt and the first 4096 new tokens at once (no moves mid-request, decode
  // graphs stay valid); beyond that it grows as tokens arrive.
  session.reserve(static_cast<int>(std::min<int64_t>(
      int64_t{session.length()} + static_cast<int64_t>(prompt.size()) + std::min(o.max_new_tokens, 4096), 1 << 30)));
  auto t0 = clock::now();
  ChunkResult last;
  for (size_t p0 = 0; p0 < prompt.size(); p0 += chunk) {
    const size_t n = std::min<size_t>(chunk, prompt.size() - p0);
    fo.logits = p0 + n == prompt.size() ? LogitsWanted::kLast : LogitsWanted::kNone;
    last = session.forward(prompt.subspan(p0, n), fo);
  }
  auto t1 = clock::now();
  st.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  if (o.max_new_tokens == 0) return st;

  fo.logits = LogitsWanted::kLast;
  int32_t token = sampler.sample(last.logits);
  auto decode_start = clock::now();
  while (true) {
    ++st.new_tokens;
    const bool eos = std::find(o.eos_ids.begin(), o.eos_ids.end(), token) != o.eos_ids.end();
    if (!on_token(token) || eos) {
      st.stopped_at_eos = eos;
      break;
    }
    if (st.new_tokens >= o.max_new_tokens) break;
    const ChunkResult r = session.forward(std::span(&token, 1), fo);
    token = sampler.sample(r.logits);
  }
  st.decode_seconds = std::chrono::duration<double>(clock::now() - decode_start).count();
  return st;
}

}  // namespace indexcache
