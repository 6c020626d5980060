// WeightStore: the tensors of a model directory, single-file or sharded.
#include "indexcache/weight_store.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string_view>

#include "indexcache/error.h"

namespace indexcache {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kIndexName[] = "model.safetensors.index.json";
constexpr char kSingleName[] = "model.safetensors";

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_bad_input(path.string(), "cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw_bad_input(path.string(), "cannot read");
  return ss.str();
}

// tensor name -> shard file name, from the index's "weight_map".
std::map<std::string, std::string> read_weight_map(const fs::path& index_path) {
  const std::string what = index_path.string();
  json index = json::parse(read_text(index_path), nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded()) throw_bad_input(what, "not valid JSON");
  if (!index.is_object()) throw_bad_input(what, "not a JSON object");
  auto it = index.find("weight_map");
  if (it == index.end()) throw_bad_input(what, "missing 'weight_map'");
  if (!it->is_object()) throw_bad_input(what, "'weight_map' is not a JSON object");
  std::map<std::string, std::string> map;
  for (const auto& [tensor, shard] : it->items()) {
    if (!shard.is_string()) {
      throw_bad_input(what, "weight_map entry for " + quote_for_message(tensor) + " is not a string");
    }
    const auto& name = shard.get_ref<const std::string&>();
    // Shards live next to the index; a path could point anywhere on the machine.
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) {
      throw_bad_input(what,
                      "weight_map entry for " + quote_for_message(tensor) + " is not a plain file name");
    }
    map.emplace(tensor, name);
  }
  return map;
}

// Every *.safetensors file in `dir`, sorted by name.
std::vector<fs::path> list_safetensors(const fs::path& dir) {
  std::vector<fs::path> paths;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".safetensors" && e.is_regular_file()) paths.push_back(e.path());
  }
  if (ec) throw_bad_input(dir.string(), "cannot list directory: " + ec.message());
  std::sort(paths.begin(), paths.end());
  return paths;
}

}  // namespace

WeightStore WeightStore::open_dir(const std::string& dir_name) {
  const fs::path dir(dir_name);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw_bad_input(dir_name, "not a directory");

  WeightStore store;
  if (fs::exists(dir / kIndexName)) {
    const auto weight_map = read_weight_map(dir / kIndexName);
    std::map<std::string, const SafetensorsFile*> shards;  // opened once each
    for (const auto& [tensor, shard] : weight_map) {
      auto [it, inserted] = shards.emplace(shard, nullptr);
      if (inserted) {
        store.files_.push_back(SafetensorsFile::open((dir / shard).string()));
        it->second = store.files_.back().get();
      }
      const TensorInfo* info = it->second->find(tensor);
      if (!info) {
        throw_bad_input(it->second->path() + ": tensor " + quote_for_message(tensor),
                        std::string("listed in ") + kIndexName + " but missing from the shard");
      }
      store.sorted_.push_back({tensor, Entry{info, it->second}});
    }
  } else {
    std::vector<fs::path> paths;
    if (fs::exists(dir / kSingleName)) {
      paths.push_back(dir / kSingleName);
    } else {
      paths = list_safetensors(dir);
    }
    if (paths.empty()) throw_bad_input(dir_name, "no .safetensors files found");
    for (const auto& p : paths) {
      store.files_.push_back(SafetensorsFile::open(p.string()));
      const SafetensorsFile* f = store.files_.back().get();
      for (const auto& t : f->tensors()) store.sorted_.push_back({t.name, Entry{&t, f}});
    }
  }

  std::stable_sort(store.sorted_.begin(), store.sorted_.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 1; i < store.sorted_.size(); ++i) {
    const auto& [name, entry] = store.sorted_[i];
    if (name == store.sorted_[i - 1].first) {
      throw_bad_input(entry.file->path() + ": tensor " + quote_for_message(name),
                      "also present in " + store.sorted_[i - 1].second.file->path());
    }
  }
  return store;
}

WeightStore::Entry WeightStore::find(const std::string& name) const {
  auto it = std::lower_bound(sorted_.begin(), sorted_.end(), name,
                             [](const auto& e, const std::string& n) { return e.first < n; });
  if (it == sorted_.end() || it->first != name) return {};
  return it->second;
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> out;
  out.reserve(sorted_.size());
  for (const auto& [name, entry] : sorted_) out.push_back(name);
  return out;
}

}  // namespace indexcache
