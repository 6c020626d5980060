#include "indexcache/index_plan.h"

#include <cctype>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "indexcache/error.h"

namespace indexcache {

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
      throw_bad_input(source, std::string("unknown letter '") + c + "' at position " +
                                  std::to_string(i) + " (only F and S)");
  }
  validate(full, num_layers, source);
  return IndexPlan(std::move(full));
}

IndexPlan IndexPlan::from_freq(int freq, int offset, int num_layers) {
  if (freq < 1) freq = 1;  // transformers: max(freq, 1)
  std::vector<bool> full(num_layers);
  for (int i = 0; i < num_layers; ++i) full[i] = std::max(i - offset + 1, 0) % freq == 0;
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
                        "unknown entry '" + t + "' at layer " + std::to_string(i) + " (full or shared)");
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

// A plan stored in a JSON file: a config.json (its IndexCache keys) or a report with "plan".
IndexPlan plan_from_json_file(const std::string& path, const ModelSpec& spec) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw_bad_input(path, "cannot open plan file");
  std::ostringstream ss;
  ss << f.rdbuf();
  auto j = nlohmann::json::parse(ss.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw_bad_input(path, "invalid JSON");
  if (j.contains("plan") && j["plan"].is_string())
    return IndexPlan::from_pattern(j["plan"].get<std::string>(), spec.num_layers, path + ": key 'plan'");
  ModelSpec with_keys = spec;
  with_keys.plan_keys = {};
  if (j.contains("indexer_types") && j["indexer_types"].is_array()) {
    std::vector<std::string> types;
    for (const auto& e : j["indexer_types"]) {
      if (!e.is_string()) throw_bad_input(path + ": key 'indexer_types'", "expected strings");
      types.push_back(e.get<std::string>());
    }
    with_keys.plan_keys.indexer_types = std::move(types);
  } else if (j.contains("index_topk_pattern") && j["index_topk_pattern"].is_string()) {
    with_keys.plan_keys.index_topk_pattern = j["index_topk_pattern"].get<std::string>();
  } else if (j.contains("index_topk_freq") && j["index_topk_freq"].is_number_integer()) {
    with_keys.plan_keys.index_topk_freq = j["index_topk_freq"].get<int>();
    if (j.contains("index_skip_topk_offset") && j["index_skip_topk_offset"].is_number_integer())
      with_keys.plan_keys.index_skip_topk_offset = j["index_skip_topk_offset"].get<int>();
  } else {
    throw_bad_input(path, "no plan found (indexer_types, index_topk_pattern, index_topk_freq or plan)");
  }
  return IndexPlan::from_config(with_keys, path);
}

}  // namespace

IndexPlan IndexPlan::parse(const std::string& text, const ModelSpec& spec) {
  const int n = spec.num_layers;
  if (text == "full") return full(n);
  if (text.size() > 2 && text.rfind("1/", 0) == 0) {
    const std::string denom = text.substr(2);
    if (denom.find_first_not_of("0123456789") != std::string::npos || denom.size() > 4)
      throw_bad_input("--plan '" + text + "'", "expected 1/N with N a positive integer");
    int freq = std::stoi(denom);
    if (freq < 1) throw_bad_input("--plan '" + text + "'", "N must be at least 1");
    return from_freq(freq, /*offset=*/1, n);
  }
  std::error_code ec;
  if (std::filesystem::is_regular_file(text, ec)) return plan_from_json_file(text, spec);
  // Letters only: an F/S string (unknown letters are reported by from_pattern).
  bool letters = !text.empty();
  for (char c : text) letters = letters && std::isalpha(static_cast<unsigned char>(c));
  if (letters && text != "full") return from_pattern(text, n, "--plan '" + text + "'");
  throw_bad_input("--plan '" + text + "'",
                  "expected full, 1/N, an F/S string of " + std::to_string(n) +
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
