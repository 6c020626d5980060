#include "indexcache/index_plan.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/json_input.h"
#include "core/mapped_file.h"
#include "indexcache/error.h"

namespace indexcache {

namespace {

// Longer plan text is cut in messages (a 100 000-letter --plan stays a short line).
constexpr size_t kPlanTextShown = 80;
// The most layers a pattern may name, and the largest N of --plan 1/N: the config limit.
constexpr int kMaxPlanLayers = spec_limits::kMaxLayers;

// User text (a --plan value, a path, a pattern letter) quoted for a one-line message.
std::string shown(const std::string& text) {
  if (text.size() <= kPlanTextShown) return quote_for_message(text);
  return quote_for_message(text.substr(0, kPlanTextShown)) + "... (" + std::to_string(text.size()) + " bytes)";
}

}  // namespace

void IndexPlan::validate(const std::vector<bool>& full, int num_layers, const std::string& source) {
  if (static_cast<int>(full.size()) != num_layers)
    throw_bad_input(source, "plan has " + std::to_string(full.size()) + " layers, the model has " +
                                std::to_string(num_layers));
  if (num_layers == 0 || !full[0])
    throw_bad_input(source, "layer 0 must be F: a shared layer needs a preceding full layer");
}

IndexPlan IndexPlan::full(int num_layers) { return IndexPlan(std::vector<bool>(num_layers, true)); }

IndexPlan IndexPlan::from_pattern(const std::string& pattern, int num_layers,
                                  const std::string& source) {
  std::vector<bool> full;
  for (size_t i = 0; i < pattern.size(); ++i) {
    char c = pattern[i];
    if (c == 'F')
      full.push_back(true);
    else if (c == 'S')
      full.push_back(false);
    else
      throw_bad_input(source, "unknown letter " + quote_for_message(std::string(1, c)) + " at position " +
                                  std::to_string(i) + " (only F and S)");
  }
  validate(full, num_layers, source);
  return IndexPlan(std::move(full));
}

IndexPlan IndexPlan::from_freq(int freq, int offset, int num_layers) {
  if (freq < 1) freq = 1;  // transformers: max(freq, 1)
  if (num_layers < 0 || num_layers > kMaxPlanLayers)
    throw_bad_input("index_topk_freq", std::to_string(num_layers) + " layers is outside [0, " +
                                           std::to_string(kMaxPlanLayers) + "]");
  std::vector<bool> full(num_layers);
  // In 64 bits: any int offset (INT_MIN included) is defined behaviour.
  for (int i = 0; i < num_layers; ++i) full[i] = std::max<int64_t>(int64_t{i} - offset + 1, 0) % freq == 0;
  validate(full, num_layers, "index_topk_freq");
  return IndexPlan(std::move(full));
}

IndexPlan IndexPlan::from_config(const ModelSpec& spec, const std::string& source) {
  const PlanKeys& k = spec.plan_keys;
  const int n = spec.num_layers;
  if (k.indexer_types) {
    std::vector<bool> full;
    for (size_t i = 0; i < k.indexer_types->size(); ++i) {
      const std::string& t = (*k.indexer_types)[i];
      if (t == "full")
        full.push_back(true);
      else if (t == "shared")
        full.push_back(false);
      else
        throw_bad_input(source + ": key 'indexer_types'",
                        "unknown entry " + shown(t) + " at layer " + std::to_string(i) + " (full or shared)");
    }
    validate(full, n, source + ": key 'indexer_types'");
    return IndexPlan(std::move(full));
  }
  if (k.index_topk_pattern)
    return from_pattern(*k.index_topk_pattern, n, source + ": key 'index_topk_pattern'");
  if (k.index_topk_freq) return from_freq(*k.index_topk_freq, k.index_skip_topk_offset.value_or(2), n);
  return full(n);
}

namespace {

// A plan stored in a JSON file: a config.json (its IndexCache keys) or a report with "plan". A key
// that is present must have its type: a wrong one is an error, not a fall-through to the next key.
IndexPlan plan_from_json_file(const std::string& path, const ModelSpec& spec) {
  const std::string where = shown(path);
  const nlohmann::json j = parse_json_input(read_regular_file(path), where);
  if (!j.is_object()) throw_bad_input(where, "expected a JSON object, got " + json_for_message(j));
  auto present = [&](const char* key) { return j.contains(key) && !j.at(key).is_null(); };
  auto key_what = [&](const char* key) { return where + ": key '" + key + "'"; };
  auto wrong_type = [&](const char* key, const std::string& expected) {
    throw_bad_input(key_what(key), "expected " + expected + ", got " + json_for_message(j.at(key)));
  };
  auto integer = [&](const char* key) {
    const auto v = json_integer_in(j.at(key), 0, INT32_MAX);
    if (!v) wrong_type(key, "an integer in [0, " + std::to_string(INT32_MAX) + "]");
    return static_cast<int>(*v);
  };
  if (present("plan")) {
    if (!j["plan"].is_string()) wrong_type("plan", "a string of F/S");
    return IndexPlan::from_pattern(j["plan"].get<std::string>(), spec.num_layers, key_what("plan"));
  }
  ModelSpec with_keys = spec;
  with_keys.plan_keys = {};
  if (present("indexer_types")) {
    const auto& v = j["indexer_types"];
    if (!v.is_array()) wrong_type("indexer_types", "a list of \"full\"/\"shared\"");
    if (v.size() > static_cast<size_t>(kMaxPlanLayers))
      throw_bad_input(key_what("indexer_types"), std::to_string(v.size()) + " entries, the model has " +
                                                     std::to_string(spec.num_layers) + " layers");
    std::vector<std::string> types;
    for (const auto& e : v) {
      if (!e.is_string())
        throw_bad_input(key_what("indexer_types"), "expected strings, got " + json_for_message(e));
      types.push_back(e.get<std::string>());
    }
    with_keys.plan_keys.indexer_types = std::move(types);
  } else if (present("index_topk_pattern")) {
    if (!j["index_topk_pattern"].is_string()) wrong_type("index_topk_pattern", "a string of F/S");
    with_keys.plan_keys.index_topk_pattern = j["index_topk_pattern"].get<std::string>();
  } else if (present("index_topk_freq")) {
    with_keys.plan_keys.index_topk_freq = integer("index_topk_freq");
    if (present("index_skip_topk_offset")) with_keys.plan_keys.index_skip_topk_offset = integer("index_skip_topk_offset");
  } else {
    throw_bad_input(where, "no plan found (indexer_types, index_topk_pattern, index_topk_freq or plan)");
  }
  return IndexPlan::from_config(with_keys, where);
}

}  // namespace

IndexPlan IndexPlan::parse(const std::string& text, const ModelSpec& spec) {
  const int n = spec.num_layers;
  const std::string what = "--plan " + shown(text);
  if (text == "full") return full(n);
  if (text.size() > 2 && text.rfind("1/", 0) == 0) {
    const std::string denom = text.substr(2);
    if (denom.find_first_not_of("0123456789") != std::string::npos || denom.size() > 9)
      throw_bad_input(what, "expected 1/N with N a positive integer");
    const int freq = std::stoi(denom);
    // N past the layer count is layer 0 alone F (as index_topk_freq N is); past the layer limit, a typo.
    if (freq < 1 || freq > kMaxPlanLayers)
      throw_bad_input(what, "N must be in [1, " + std::to_string(kMaxPlanLayers) + "]");
    return from_freq(freq, /*offset=*/1, n);
  }
  std::error_code ec;
  if (std::filesystem::is_regular_file(text, ec)) return plan_from_json_file(text, spec);
  // Letters only: an F/S string (unknown letters are reported by from_pattern).
  bool letters = !text.empty();
  for (char c : text) letters = letters && std::isalpha(static_cast<unsigned char>(c));
  if (letters && text != "full") return from_pattern(text, n, what);
  throw_bad_input(what, "expected full, 1/N, an F/S string of " + std::to_string(n) +
                            " letters, or a config/report JSON file");
}

int IndexPlan::num_full() const {
  int c = 0;
  for (bool f : full_) c += f;
  return c;
}

int IndexPlan::source_layer(int layer) const {
  while (layer > 0 && !full_[layer]) --layer;
  return layer;
}

std::string IndexPlan::pattern() const {
  std::string s;
  for (bool f : full_) s += f ? 'F' : 'S';
  return s;
}

std::vector<std::string> IndexPlan::indexer_types() const {
  std::vector<std::string> t;
  for (bool f : full_) t.push_back(f ? "full" : "shared");
  return t;
}

}  // namespace indexcache
