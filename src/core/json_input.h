// JSON from files a user hands us (config.json, tokenizer.json, plan files, state files, JSONL
// lines): one parser with bounded nesting and one-line errors, and a bounded way to show a bad value
// in a message. Private to the library (nlohmann stays out of the public headers).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace indexcache {

// Deeper than this and the input is refused before nlohmann builds anything. Real configs and
// tokenizers nest < 10 levels; a safetensors header needs 3.
inline constexpr int kMaxJsonInputDepth = 64;

// Parses `text`; a syntax error, a NUL byte, nesting deeper than `max_depth` or an empty text
// throws bad input "<source>: ..." on one line (the byte offset of a syntax error included).
nlohmann::json parse_json_input(std::string_view text, const std::string& source,
                                int max_depth = kMaxJsonInputDepth);
nlohmann::ordered_json parse_ordered_json_input(std::string_view text, const std::string& source,
                                                int max_depth = kMaxJsonInputDepth);

// Duplicate object keys: nlohmann keeps the last of two equal keys without a word; in a
// safetensors header or a shard index that silently replaces a tensor, so those readers refuse
// them. The first key that appears twice in one object of `text` (depth: of the object holding it,
// 1 for the root's keys), or nullopt. Run it on text parse_json_input has accepted (bounded
// nesting, no syntax error); one SAX pass, memory the keys of the objects open at a time.
struct DuplicateKey {
  std::string key;
  int depth = 0;
};
std::optional<DuplicateKey> find_duplicate_json_key(std::string_view text);

// The deepest nesting of arrays/objects in `text` (strings skipped), stopping early once it passes
// `stop_after`; no allocation, no recursion.
int json_nesting_depth(std::string_view text, int stop_after);

// `v` as an integer in [lo, hi]: nullopt when it is not an integer (a float, even 3.0, a string, a
// bool) or lies outside, including unsigned values past INT64_MAX. Never wraps or truncates.
std::optional<int64_t> json_integer_in(const nlohmann::json& v, int64_t lo, int64_t hi);
std::optional<int64_t> json_integer_in(const nlohmann::ordered_json& v, int64_t lo, int64_t hi);

// A JSON value for a one-line message: its compact dump cut to about `max_chars` ("..." marks the
// cut), control and non-ASCII bytes escaped. Bounded work: large arrays/objects are not dumped whole.
std::string json_for_message(const nlohmann::json& value, std::size_t max_chars = 60);
std::string json_for_message(const nlohmann::ordered_json& value, std::size_t max_chars = 60);

}  // namespace indexcache
