// Integer flags, one rule for every command: the value is a plain decimal integer (an optional
// '-', then digits) inside the flag's range, else a one-line usage error (exit 2) naming the flag
// and the range. CLI11's own conversion lets `--seed -1` and `--seed 18446744073709551616` both
// become 2^64 - 1; a validator sees the text before that conversion. Use:
//   app.add_option("--ctx", f.ctx, "...")->check(integer_in(2, kMaxTokensFlag));
//   app.add_option("--seed", f.seed, "...")->check(seed_value());
#pragma once

#include <CLI/CLI.hpp>
#include <charconv>
#include <cstdint>
#include <limits>
#include <string>

#include "indexcache/error.h"
#include "indexcache/model_spec.h"

namespace indexcache::cli {

// Ranges shared by the commands' flags.
inline constexpr int64_t kMaxTokensFlag = spec_limits::kMaxPositions;  // --ctx, -n, --chunk, --decode-steps
inline constexpr int64_t kMaxCountFlag = 1 << 24;                      // --max-windows, --max-items, --windows
inline constexpr int64_t kMaxThreadsFlag = 4096;                       // --threads
inline constexpr int64_t kMaxGpuFlag = 1023;                           // --gpu
inline constexpr int64_t kMaxLayersFlag = spec_limits::kMaxLayers;     // --layers, --keep-layers

namespace flags_detail {

// The error for `text` as an integer in [lo, hi] ("" when it is one). Bounds as __int128 so that
// the full uint64_t range of a seed and every int64_t range are one code path.
inline std::string integer_error(const std::string& text, __int128 lo, __int128 hi) {
  auto bound = [](__int128 v) {
    const bool neg = v < 0;
    unsigned __int128 m = neg ? -static_cast<unsigned __int128>(v) : static_cast<unsigned __int128>(v);
    std::string s;
    do {
      s.insert(s.begin(), static_cast<char>('0' + static_cast<int>(m % 10)));
      m /= 10;
    } while (m);
    return neg ? "-" + s : s;
  };
  const std::string range = "[" + bound(lo) + ", " + bound(hi) + "]";
  const std::string shown = quote_for_message(text.size() <= 40 ? text : text.substr(0, 40) + "...");
  const bool neg = !text.empty() && text[0] == '-';
  const char* first = text.data() + (neg ? 1 : 0);
  const char* last = text.data() + text.size();
  uint64_t mag = 0;
  const auto [end, ec] = std::from_chars(first, last, mag);
  if (first == last || end != last || (*first < '0' || *first > '9'))
    return "expected an integer in " + range + ", got " + shown;
  if (ec == std::errc::result_out_of_range) return shown + " is outside " + range;
  const __int128 v = neg ? -static_cast<__int128>(mag) : static_cast<__int128>(mag);
  if (v < lo || v > hi) return shown + " is outside " + range;
  return {};
}

}  // namespace flags_detail

// A validator for an integer flag in [lo, hi] (checked before CLI11 converts the text).
inline CLI::Validator integer_in(int64_t lo, int64_t hi) {
  return CLI::Validator([lo, hi](std::string& v) { return flags_detail::integer_error(v, lo, hi); }, "");
}

// A seed: any integer in [0, 2^64 - 1]; a negative or larger one is an error, not a wrap.
inline CLI::Validator seed_value() {
  return CLI::Validator(
      [](std::string& v) { return flags_detail::integer_error(v, 0, std::numeric_limits<uint64_t>::max()); }, "");
}

// A text flag that, when given, must not be empty (`--plan ''` is an error, not "the default").
inline CLI::Validator non_empty() {
  return CLI::Validator([](std::string& v) { return v.empty() ? std::string("needs a value, got ''") : std::string(); }, "");
}

}  // namespace indexcache::cli
