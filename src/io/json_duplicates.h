// Duplicate object keys in JSON text. nlohmann keeps the last of two equal keys without a word;
// in a safetensors header or a shard index that silently replaces a tensor, so those readers
// refuse them. Run it on text parse_json_input (core/json_input.h) has accepted: the nesting is
// bounded then, and a syntax error cannot reach here.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

namespace indexcache {

struct DuplicateKey {
  std::string key;
  int depth = 0;  // of the object holding it: 1 for the root object's keys
};

// The first key that appears twice in one object of `text`, or nullopt. One SAX pass; memory is
// the keys of the objects open at a time.
inline std::optional<DuplicateKey> find_duplicate_json_key(std::string_view text) {
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

}  // namespace indexcache
