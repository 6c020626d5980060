// Fuzzes config.json parsing: any text either yields a ModelSpec or throws indexcache::Error.
// Anything else (a crash, a sanitizer report, another exception type) is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "indexcache/error.h"
#include "indexcache/model_spec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    indexcache::ModelSpec spec = indexcache::parse_model_spec(text, "fuzz");
    volatile double sink = spec.attention_scale() + spec.rope_attention_factor();
    (void)sink;
  } catch (const indexcache::Error& e) {
    if (e.kind() != indexcache::ErrorKind::kBadInput) __builtin_trap();
  }
  return 0;
}
