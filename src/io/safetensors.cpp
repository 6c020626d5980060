// Safetensors reader: every byte of the header is treated as hostile until validated.
#include "indexcache/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>

#include "core/json_input.h"
#include "core/mapped_file.h"
#include "indexcache/error.h"

namespace indexcache {

namespace {

using nlohmann::json;

// Same limit as the reference implementation: a larger header is not a real checkpoint.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
// A valid header nests at most 3 deep (root / entry / shape); anything far deeper is hostile.
constexpr int kMaxJsonDepth = 8;
constexpr std::string_view kMetadataKey = "__metadata__";

std::string tensor_what(const std::string& source, std::string_view name) {
  return source + ": tensor " + quote_for_message(name);
}

uint64_t read_u64_le(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

// A JSON integer >= 0, whether nlohmann stored it signed or unsigned.
std::optional<uint64_t> as_u64(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0)
    return static_cast<uint64_t>(v.get<int64_t>());
  return std::nullopt;
}

json parse_header_json(std::string_view text, const std::string& source) {
  json header = parse_json_input(text, source, kMaxJsonDepth);
  if (!header.is_object()) throw_bad_input(source, "header is not a JSON object");
  // Two entries of one name: nlohmann keeps the last, which would hide the first's bytes.
  if (auto dup = find_duplicate_json_key(text)) {
    if (dup->depth == 1)
      throw_bad_input(tensor_what(source, dup->key), "listed twice in the header");
    throw_bad_input(source, "key " + quote_for_message(dup->key) + ": listed twice in one header entry");
  }
  return header;
}

std::map<std::string, std::string> parse_metadata(const json& meta, const std::string& source) {
  if (!meta.is_object()) throw_bad_input(source, "__metadata__ is not a JSON object");
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : meta.items()) {
    if (!value.is_string()) {
      throw_bad_input(source, "__metadata__ value of " + quote_for_message(key) + " is not a string");
    }
    out.emplace(key, value.get<std::string>());
  }
  return out;
}

DType parse_entry_dtype(const json& entry, const std::string& what) {
  auto it = entry.find("dtype");
  if (it == entry.end()) throw_bad_input(what, "missing 'dtype'");
  if (!it->is_string()) throw_bad_input(what, "'dtype' is not a string");
  auto dtype = parse_dtype(it->get_ref<const std::string&>());
  if (!dtype)
    throw_bad_input(what, "unknown dtype " + quote_for_message(it->get_ref<const std::string&>()));
  return *dtype;
}

// Parses the shape and returns its element count, rejecting negative dims and overflow.
std::vector<int64_t> parse_entry_shape(const json& entry, const std::string& what,
                                       uint64_t* numel) {
  auto it = entry.find("shape");
  if (it == entry.end()) throw_bad_input(what, "missing 'shape'");
  if (!it->is_array()) throw_bad_input(what, "'shape' is not an array");
  std::vector<int64_t> shape;
  uint64_t n = 1;
  for (const auto& d : *it) {
    if (!d.is_number_integer()) throw_bad_input(what, "shape has a non-integer dimension");
    auto dim = as_u64(d);
    if (!dim) throw_bad_input(what, "shape has a negative dimension");
    if (*dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        (*dim != 0 && n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / *dim)) {
      throw_bad_input(what, "shape element count overflows");
    }
    n *= *dim;
    shape.push_back(static_cast<int64_t>(*dim));
  }
  *numel = n;
  return shape;
}

std::pair<uint64_t, uint64_t> parse_entry_offsets(const json& entry, const std::string& what) {
  auto it = entry.find("data_offsets");
  if (it == entry.end()) throw_bad_input(what, "missing 'data_offsets'");
  if (!it->is_array() || it->size() != 2) {
    throw_bad_input(what, "'data_offsets' is not an array of two integers");
  }
  auto begin = as_u64((*it)[0]);
  auto end = as_u64((*it)[1]);
  if (!begin || !end) throw_bad_input(what, "'data_offsets' are not non-negative integers");
  return {*begin, *end};
}

TensorInfo parse_entry(const std::string& name, const json& entry, uint64_t data_size,
                       const std::string& source) {
  const std::string what = tensor_what(source, name);
  if (!entry.is_object()) throw_bad_input(what, "entry is not a JSON object");
  TensorInfo t;
  t.name = name;
  t.dtype = parse_entry_dtype(entry, what);
  uint64_t numel = 0;
  t.shape = parse_entry_shape(entry, what, &numel);
  auto [begin, end] = parse_entry_offsets(entry, what);
  if (begin > end) {
    throw_bad_input(what, "data_offsets begin " + std::to_string(begin) + " is after end " +
                              std::to_string(end));
  }
  if (end > data_size) {
    throw_bad_input(what, "data_offsets end " + std::to_string(end) +
                              " is beyond the data block (" + std::to_string(data_size) +
                              " bytes)");
  }
  uint64_t expected = 0;
  if (__builtin_mul_overflow(numel, dtype_size(t.dtype), &expected)) {
    throw_bad_input(what, "shape byte size overflows");
  }
  if (expected != end - begin) {
    throw_bad_input(what, "shape and dtype need " + std::to_string(expected) +
                              " bytes but data_offsets span " + std::to_string(end - begin));
  }
  t.offset = begin;
  t.nbytes = end - begin;
  return t;
}

// Rejects tensors whose byte ranges share a byte (empty tensors occupy none).
void check_no_overlap(const std::vector<TensorInfo>& tensors, const std::string& source) {
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : tensors)
    if (t.nbytes > 0) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->offset != b->offset ? a->offset < b->offset : a->nbytes < b->nbytes;
  });
  const TensorInfo* reach = nullptr;  // the tensor extending furthest so far
  for (const TensorInfo* t : by_offset) {
    if (reach && t->offset < reach->offset + reach->nbytes) {
      throw_bad_input(source, "tensors " + quote_for_message(reach->name) + " and " + quote_for_message(t->name) +
                                  " overlap in the data block");
    }
    if (!reach || t->offset + t->nbytes > reach->offset + reach->nbytes) reach = t;
  }
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::~SafetensorsFile() = default;

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<MappedFile> mapped = MappedFile::open(path);
  auto file = parse(mapped->bytes(), path_for_message(path));
  file->path_ = path;
  file->file_ = std::move(mapped);
  return file;
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::parse(std::span<const std::byte> bytes,
                                                        const std::string& source) {
  if (bytes.size() < 8) {
    throw_bad_input(source, "truncated: " + std::to_string(bytes.size()) +
                                " bytes, shorter than the 8-byte header length");
  }
  const uint64_t header_len = read_u64_le(bytes.data());
  const uint64_t available = bytes.size() - 8;
  if (header_len > kMaxHeaderBytes) {
    throw_bad_input(source, "header length " + std::to_string(header_len) +
                                " exceeds the limit of " + std::to_string(kMaxHeaderBytes));
  }
  if (header_len > available) {
    throw_bad_input(source, "header length " + std::to_string(header_len) +
                                " runs past the end of the file (" + std::to_string(bytes.size()) +
                                " bytes)");
  }
  std::string_view text(reinterpret_cast<const char*>(bytes.data()) + 8, header_len);
  json header = parse_header_json(text, source);

  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->path_ = source;
  file->data_ = bytes.subspan(8 + header_len);
  for (const auto& [name, entry] : header.items()) {
    if (name == kMetadataKey) {
      file->metadata_ = parse_metadata(entry, source);
      continue;
    }
    file->tensors_.push_back(parse_entry(name, entry, file->data_.size(), source));
  }
  check_no_overlap(file->tensors_, source);
  for (size_t i = 0; i < file->tensors_.size(); ++i) file->index_[file->tensors_[i].name] = i;
  return file;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace indexcache
