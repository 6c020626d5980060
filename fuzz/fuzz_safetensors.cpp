// Fuzzes the safetensors header parser: any input either parses into tensors whose byte ranges
// lie inside the input and agree with their shapes, or throws indexcache::Error. Anything else
// (a crash, a sanitizer report, another exception type) is a bug.
#include <cstddef>
#include <cstdint>
#include <span>

#include "indexcache/error.h"
#include "indexcache/safetensors.h"

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

void check_tensors(const indexcache::SafetensorsFile& f, std::span<const std::byte> input) {
  for (const auto& t : f.tensors()) {
    check(f.find(t.name) == &t);
    check(t.numel() >= 0);
    check(static_cast<uint64_t>(t.numel()) * indexcache::dtype_size(t.dtype) == t.nbytes);
    if (t.nbytes == 0) continue;
    const std::byte* first = f.data(t);
    const std::byte* last = first + (t.nbytes - 1);
    check(first >= input.data() && last < input.data() + input.size());
    // Touch both ends so ASan sees any read outside the input buffer.
    volatile std::byte sink = *first;
    sink = *last;
    (void)sink;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto input = std::as_bytes(std::span(data, size));
  try {
    auto f = indexcache::SafetensorsFile::parse(input, "fuzz");
    check_tensors(*f, input);
  } catch (const indexcache::Error& e) {
    check(e.kind() == indexcache::ErrorKind::kBadInput);
  }
  return 0;
}
