// All tensors of a model directory: model.safetensors, or the shards named by
// model.safetensors.index.json (its weight_map), each memory-mapped.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "indexcache/safetensors.h"

namespace indexcache {

class WeightStore {
 public:
  // Opens `dir`/model.safetensors.index.json if present, else `dir`/model.safetensors, else every
  // *.safetensors in `dir`. Errors name the file; a tensor listed in the index but absent from its
  // shard, or a tensor present in two files, is an error.
  static WeightStore open_dir(const std::string& dir);

  struct Entry {
    const TensorInfo* info = nullptr;
    const SafetensorsFile* file = nullptr;
  };
  // nullptr info if the tensor is absent.
  Entry find(const std::string& name) const;
  bool has(const std::string& name) const { return find(name).info != nullptr; }
  std::vector<std::string> names() const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<std::pair<std::string, Entry>> sorted_;  // by name, for binary search
};

}  // namespace indexcache
