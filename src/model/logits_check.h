// The one check on logits as they leave the engine (dump, eval, generate, calibrate, overlap):
// a NaN or an infinity is an error naming the token position, never a result. One pass over rows
// that are already on the host.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>

#include "indexcache/error.h"

namespace indexcache {

// `logits` holds rows of `vocab` values for the tokens at positions first_position,
// first_position + 1, ...; throws Error(kRuntime) "logits: ..." at the first non-finite value.
inline void check_logits_finite(std::span<const float> logits, int64_t vocab, int64_t first_position) {
  // One vectorisable pass (an integer OR): a NaN or an infinity has every exponent bit set.
  constexpr uint32_t kExponent = 0x7f800000u;
  uint32_t bad = 0;
  for (const float v : logits) bad |= static_cast<uint32_t>((std::bit_cast<uint32_t>(v) & kExponent) == kExponent);
  if (!bad) return;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (std::isfinite(logits[i])) continue;
    const int64_t at = static_cast<int64_t>(i);
    const int64_t row = vocab > 0 ? at / vocab : 0, col = vocab > 0 ? at % vocab : at;
    throw_runtime("logits", std::string(std::isnan(logits[i]) ? "NaN" : "infinity") + " at token position " +
                                std::to_string(first_position + row) + " (vocab entry " + std::to_string(col) +
                                "): the weights or config.json make the model overflow");
  }
}

}  // namespace indexcache
