// WeightStore: the tensors of a model directory, single-file or sharded.
#include "indexcache/weight_store.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string_view>

#include "core/json_input.h"
#include "core/mapped_file.h"
#include "indexcache/error.h"

namespace indexcache {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kIndexName[] = "model.safetensors.index.json";
constexpr char kSingleName[] = "model.safetensors";

// A shard name from the index: a plain file name next to it (a path could point anywhere on the
// machine), printable, so that every message naming it stays on one line.
bool plain_file_name(const std::string& name) {
  if (name.empty() || name == "." || name == "..") return false;
  return std::none_of(name.begin(), name.end(), [](char ch) {
    const auto c = static_cast<unsigned char>(ch);
    return c == '/' || c < 0x20 || c == 0x7f;
  });
}

// tensor name -> shard file name, from the index's "weight_map".
std::map<std::string, std::string> read_weight_map(const fs::path& index_path) {
  const std::string what = path_for_message(index_path.string());
  const std::string text = read_regular_file(index_path.string());
  const json index = parse_json_input(text, what);
  if (!index.is_object()) throw_bad_input(what, "not a JSON object");
  // A tensor listed twice would be read from whichever shard nlohmann kept.
  if (auto dup = find_duplicate_json_key(text))
    throw_bad_input(what, quote_for_message(dup->key) + ": listed twice");
  auto it = index.find("weight_map");
  if (it == index.end()) throw_bad_input(what, "missing 'weight_map'");
  if (!it->is_object()) throw_bad_input(what, "'weight_map' is not a JSON object");
  std::map<std::string, std::string> map;
  for (const auto& [tensor, shard] : it->items()) {
    if (!shard.is_string()) {
      throw_bad_input(what, "weight_map entry for " + quote_for_message(tensor) + " is not a string");
    }
    const auto& name = shard.get_ref<const std::string&>();
    if (!plain_file_name(name)) {
      throw_bad_input(what, "weight_map entry for " + quote_for_message(tensor) + " is not a plain file name: " +
                                quote_for_message(name));
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
    if (e.path().extension() != ".safetensors" || !e.is_regular_file()) continue;
    // Its path goes into messages unquoted (the loader's among them): printable names only.
    if (!plain_file_name(e.path().filename().string()))
      throw_bad_input(path_for_message(dir.string()),
                      "shard " + quote_for_message(e.path().filename().string()) + " has control bytes in its name");
    paths.push_back(e.path());
  }
  if (ec) throw_bad_input(path_for_message(dir.string()), "cannot list directory: " + ec.message());
  std::sort(paths.begin(), paths.end());
  return paths;
}

}  // namespace

WeightStore WeightStore::open_dir(const std::string& dir_name) {
  const fs::path dir(dir_name);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw_bad_input(path_for_message(dir_name), "not a directory");

  WeightStore store;
  // exists() on the name only: a FIFO or directory there is refused by read_regular_file.
  if (fs::exists(fs::symlink_status(dir / kIndexName, ec))) {
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
        throw_bad_input(path_for_message(it->second->path()) + ": tensor " + quote_for_message(tensor),
                        std::string("listed in ") + kIndexName + " but missing from the shard");
      }
      store.sorted_.push_back({tensor, Entry{info, it->second}});
    }
    // A shard holding a tensor the index places in another shard: two copies, one of them unread.
    for (const auto& file : store.files_) {
      for (const TensorInfo& t : file->tensors()) {
        auto listed = weight_map.find(t.name);
        if (listed == weight_map.end() || (dir / listed->second).string() == file->path()) continue;
        throw_bad_input(path_for_message(file->path()) + ": tensor " + quote_for_message(t.name),
                        "also present in " + path_for_message((dir / listed->second).string()) + " (where " +
                            std::string(kIndexName) + " places it)");
      }
    }
  } else {
    std::vector<fs::path> paths;
    if (fs::exists(dir / kSingleName)) {
      paths.push_back(dir / kSingleName);
    } else {
      paths = list_safetensors(dir);
    }
    if (paths.empty()) throw_bad_input(path_for_message(dir_name), "no .safetensors files found");
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
      throw_bad_input(path_for_message(entry.file->path()) + ": tensor " + quote_for_message(name),
                      "also present in " + path_for_message(store.sorted_[i - 1].second.file->path()));
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
