// Safetensors files: reading (memory-mapped, validated against hostile input) and writing.
//
// A file is: 8-byte little-endian header length N, N bytes of JSON header, then the data block.
// The header maps tensor names to {dtype, shape, data_offsets: [begin, end]} relative to the data
// block, plus an optional "__metadata__" object of string values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "indexcache/dtype.h"

namespace indexcache {

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  size_t offset = 0;  // byte offset of the first element within the data block
  size_t nbytes = 0;
  int64_t numel() const;
};

class MappedFile;

// One safetensors file, memory-mapped read-only. Every check happens in open(): header length
// within the file, valid JSON, known dtypes, non-negative shapes whose byte size equals the
// offsets span, offsets inside the data block and not overlapping. Failures throw
// Error(kBadInput) naming the file (and tensor).
class SafetensorsFile {
 public:
  static std::unique_ptr<SafetensorsFile> open(const std::string& path);
  // Parses an in-memory image (used by open() and by the fuzzer); `source` names it in errors.
  // The bytes must outlive the object.
  static std::unique_ptr<SafetensorsFile> parse(std::span<const std::byte> bytes,
                                                const std::string& source);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;  // nullptr if absent
  // Pointer to the tensor's first byte (may be unaligned).
  const std::byte* data(const TensorInfo& t) const { return data_.data() + t.offset; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  std::shared_ptr<MappedFile> file_;
  std::span<const std::byte> data_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: name, dtype, shape and its raw little-endian bytes.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::span<const std::byte> bytes;
};

// Writes a safetensors file (tensors sorted by name, data 8-byte aligned). Throws Error(kRuntime)
// on I/O failure.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace indexcache
