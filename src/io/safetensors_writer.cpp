// Safetensors writer: header JSON padded so the data block starts 8-byte aligned, tensors packed
// back to back in name order (the layout the reference readers require).
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "indexcache/error.h"
#include "indexcache/safetensors.h"

namespace indexcache {

namespace {

using nlohmann::json;

// Byte size that `t`'s shape and dtype call for; logic_error on a negative dim or overflow.
uint64_t expected_bytes(const TensorToWrite& t) {
  uint64_t n = dtype_size(t.dtype);
  for (int64_t d : t.shape) {
    if (d < 0) throw std::logic_error("write_safetensors: negative dim in '" + t.name + "'");
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) {
      throw std::logic_error("write_safetensors: shape of '" + t.name + "' overflows");
    }
  }
  return n;
}

std::vector<const TensorToWrite*> sorted_checked(const std::vector<TensorToWrite>& tensors) {
  std::vector<const TensorToWrite*> sorted;
  std::set<std::string_view> names;
  for (const auto& t : tensors) {
    if (t.name == "__metadata__") throw std::logic_error("write_safetensors: reserved name");
    if (!names.insert(t.name).second) {
      throw std::logic_error("write_safetensors: duplicate tensor '" + t.name + "'");
    }
    if (expected_bytes(t) != t.bytes.size()) {
      throw std::logic_error("write_safetensors: '" + t.name +
                             "' has shape/dtype size != byte count " +
                             std::to_string(t.bytes.size()));
    }
    sorted.push_back(&t);
  }
  std::sort(sorted.begin(), sorted.end(),
            [](const TensorToWrite* a, const TensorToWrite* b) { return a->name < b->name; });
  return sorted;
}

std::string make_header(const std::vector<const TensorToWrite*>& sorted,
                        const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const TensorToWrite* t : sorted) {
    header[t->name] = {{"dtype", dtype_name(t->dtype)},
                       {"shape", t->shape},
                       {"data_offsets", {offset, offset + t->bytes.size()}}};
    offset += t->bytes.size();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

void write_all(std::FILE* f, const void* data, size_t n, const std::string& path) {
  if (n > 0 && std::fwrite(data, 1, n, f) != n) throw_runtime(path, std::strerror(errno));
}

// Writes the whole image to `tmp`; the caller renames it over the destination.
void write_image(const std::string& tmp, const std::string& header,
                 const std::vector<const TensorToWrite*>& sorted) {
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw_runtime(tmp, std::string("cannot create: ") + std::strerror(errno));
  try {
    unsigned char len[8];
    uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
    write_all(f, len, sizeof(len), tmp);
    write_all(f, header.data(), header.size(), tmp);
    for (const TensorToWrite* t : sorted) write_all(f, t->bytes.data(), t->bytes.size(), tmp);
    if (std::fflush(f) != 0) throw_runtime(tmp, std::strerror(errno));
  } catch (...) {
    std::fclose(f);
    throw;
  }
  if (std::fclose(f) != 0) throw_runtime(tmp, std::strerror(errno));
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const auto sorted = sorted_checked(tensors);
  std::string header;
  try {
    header = make_header(sorted, metadata);
  } catch (const json::exception& e) {  // e.g. a name or metadata value that is not UTF-8
    throw std::logic_error(std::string("write_safetensors: ") + e.what());
  }
  // Write next to the destination and rename, so a failure never leaves a half-written file.
  const std::string tmp = path + ".tmp";
  try {
    write_image(tmp, header, sorted);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw_runtime(path, std::string("cannot write: ") + std::strerror(e));
  }
}

}  // namespace indexcache
