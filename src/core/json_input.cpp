#include "core/json_input.h"

#include "indexcache/error.h"

#include <unordered_set>
#include <vector>

namespace indexcache {

int json_nesting_depth(std::string_view text, int stop_after) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > deepest) {
        deepest = depth;
        if (deepest > stop_after) return deepest;
      }
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

namespace {

template <class Json>
Json parse_bounded(std::string_view text, const std::string& source, int max_depth) {
  // nlohmann ends the input at a NUL byte and ignores what follows; JSON text has none.
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos)
    throw_bad_input(source, "invalid JSON (NUL byte at byte " + std::to_string(nul) + ")");
  if (json_nesting_depth(text, max_depth) > max_depth)
    throw_bad_input(source, "JSON nests deeper than " + std::to_string(max_depth) + " levels");
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::parse_error& e) {
    if (text.find_first_not_of(" \t\r\n") == std::string_view::npos)
      throw_bad_input(source, "empty, expected JSON");
    throw_bad_input(source, "invalid JSON (byte " + std::to_string(e.byte) + ")");
  } catch (const nlohmann::json::exception&) {
    throw_bad_input(source, "invalid JSON");
  }
}

// Compact text of `v`, stopping once `out` passes `limit` bytes (arrays/objects element by element).
template <class Json>
void dump_bounded(const Json& v, std::size_t limit, std::string& out) {
  if (out.size() > limit) return;
  if (v.is_array()) {
    out += '[';
    bool first = true;
    for (const auto& e : v) {
      if (out.size() > limit) return;
      if (!first) out += ',';
      first = false;
      dump_bounded(e, limit, out);
    }
    out += ']';
  } else if (v.is_object()) {
    out += '{';
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (out.size() > limit) return;
      if (!first) out += ',';
      first = false;
      out += Json(it.key()).dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
      out += ':';
      dump_bounded(it.value(), limit, out);
    }
    out += '}';
  } else if (v.is_string()) {
    const auto& s = v.template get_ref<const std::string&>();
    // Only a prefix of a long string is shown; dumping a prefix keeps the work bounded.
    Json prefix = s.substr(0, limit + 1);
    out += prefix.dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
  } else {
    out += v.dump();
  }
}

template <class Json>
std::optional<int64_t> integer_in(const Json& v, int64_t lo, int64_t hi) {
  int64_t x = 0;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.template get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
    x = static_cast<int64_t>(u);
  } else if (v.is_number_integer()) {
    x = v.template get<int64_t>();
  } else {
    return std::nullopt;
  }
  if (x < lo || x > hi) return std::nullopt;
  return x;
}

template <class Json>
std::string for_message(const Json& v, std::size_t max_chars) {
  std::string text;
  dump_bounded(v, max_chars, text);
  const bool cut = text.size() > max_chars;
  if (cut) text.resize(max_chars);
  std::string out;
  static constexpr char kHex[] = "0123456789abcdef";
  for (unsigned char c : text) {
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return cut ? out + "..." : out;
}

}  // namespace

std::optional<DuplicateKey> find_duplicate_json_key(std::string_view text) {
  using json = nlohmann::json;
  struct Finder : nlohmann::json_sax<json> {
    std::vector<std::unordered_set<std::string>> open;  // one per open container (arrays: empty)
    std::optional<DuplicateKey> found;
    bool null() override { return true; }
    bool boolean(bool) override { return true; }
    bool number_integer(number_integer_t) override { return true; }
    bool number_unsigned(number_unsigned_t) override { return true; }
    bool number_float(number_float_t, const string_t&) override { return true; }
    bool string(string_t&) override { return true; }
    bool binary(binary_t&) override { return true; }
    bool start_object(std::size_t) override {
      open.emplace_back();
      return true;
    }
    bool key(string_t& k) override {
      if (!open.back().insert(k).second) {
        found = DuplicateKey{k, static_cast<int>(open.size())};
        return false;  // stop here
      }
      return true;
    }
    bool end_object() override {
      open.pop_back();
      return true;
    }
    bool start_array(std::size_t) override {
      open.emplace_back();
      return true;
    }
    bool end_array() override {
      open.pop_back();
      return true;
    }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }
  } finder;
  json::sax_parse(text.begin(), text.end(), &finder, nlohmann::detail::input_format_t::json, /*strict=*/true);
  return finder.found;
}

nlohmann::json parse_json_input(std::string_view text, const std::string& source, int max_depth) {
  return parse_bounded<nlohmann::json>(text, source, max_depth);
}

nlohmann::ordered_json parse_ordered_json_input(std::string_view text, const std::string& source,
                                                int max_depth) {
  return parse_bounded<nlohmann::ordered_json>(text, source, max_depth);
}

std::optional<int64_t> json_integer_in(const nlohmann::json& v, int64_t lo, int64_t hi) {
  return integer_in(v, lo, hi);
}

std::optional<int64_t> json_integer_in(const nlohmann::ordered_json& v, int64_t lo, int64_t hi) {
  return integer_in(v, lo, hi);
}

std::string json_for_message(const nlohmann::json& value, std::size_t max_chars) {
  return for_message(value, max_chars);
}

std::string json_for_message(const nlohmann::ordered_json& value, std::size_t max_chars) {
  return for_message(value, max_chars);
}

}  // namespace indexcache
