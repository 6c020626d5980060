// Opening files a user hands us: a read-only memory-mapped file, and a whole small file read into
// a string. Both open only regular files: a FIFO would block the open (or the read) for ever, a
// directory or device is never a model file; either is a one-line bad-input error instead.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace indexcache {

class MappedFile {
 public:
  // Throws Error(kBadInput) naming the path if it is not a regular file or cannot be opened or
  // mapped.
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

// The contents of the regular file `path` (config.json, tokenizer.json, an index file). Throws
// Error(kBadInput) "<path>: ..." when it is missing, not a regular file, larger than `max_bytes`
// or unreadable.
std::string read_regular_file(const std::string& path, size_t max_bytes = size_t{1} << 30);

// `path` as it may appear in a one-line message: unchanged when it has no control bytes, else
// quoted (quote_for_message).
std::string path_for_message(std::string_view path);

}  // namespace indexcache
