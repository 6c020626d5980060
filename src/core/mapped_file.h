// A read-only memory-mapped file.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>

namespace indexcache {

class MappedFile {
 public:
  // Throws Error(kBadInput) naming the path if it cannot be opened or mapped.
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const std::byte> bytes() const { return {data_, size_}; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace indexcache
