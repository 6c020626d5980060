// Fuzzes the --plan parser: IndexPlan::parse on plan text (full, 1/N, F/S strings, anything) and on
// JSON plan files (config.json keys or a report's "plan"), plus from_freq on arbitrary ints. Any
// input either gives a plan that fits the model (its layer count, layer 0 F) or throws
// indexcache::Error of kind bad input; anything else (a crash, a sanitizer report, another
// exception type, a plan that breaks the invariants) is a finding.
//
// Input: byte 0 picks the mode, byte 1 the layer count (1..64), the rest is the payload.
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "indexcache/error.h"
#include "indexcache/index_plan.h"
#include "indexcache/model_spec.h"

namespace {

void check(const indexcache::IndexPlan& plan, int layers) {
  if (plan.num_layers() != layers || !plan.is_full(0)) __builtin_trap();
  if (static_cast<int>(plan.pattern().size()) != layers) __builtin_trap();
  for (int l = 0; l < layers; ++l)
    if (!plan.is_full(plan.source_layer(l))) __builtin_trap();
}

// A per-process file the JSON payload is written to (parse() reads plan files by path).
const std::string& plan_path() {
  static const std::string p = "/tmp/fuzz_plan." + std::to_string(getpid()) + ".json";
  return p;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const int mode = data[0] % 3;
  const int layers = 1 + data[1] % 64;
  const std::string payload(reinterpret_cast<const char*>(data) + 2, size - 2);
  indexcache::ModelSpec spec;
  spec.num_layers = layers;
  try {
    if (mode == 0) {
      // Plan text; a payload that happens to name an existing file is read as a plan file.
      check(indexcache::IndexPlan::parse(payload, spec), layers);
    } else if (mode == 1) {
      FILE* f = std::fopen(plan_path().c_str(), "wb");
      if (!f) return 0;
      std::fwrite(payload.data(), 1, payload.size(), f);
      std::fclose(f);
      check(indexcache::IndexPlan::parse(plan_path(), spec), layers);
    } else {
      int32_t freq = 0, offset = 0;
      std::memcpy(&freq, payload.data(), std::min<size_t>(4, payload.size()));
      if (payload.size() > 4) std::memcpy(&offset, payload.data() + 4, std::min<size_t>(4, payload.size() - 4));
      check(indexcache::IndexPlan::from_freq(freq, offset, layers), layers);
    }
  } catch (const indexcache::Error& e) {
    if (e.kind() != indexcache::ErrorKind::kBadInput) __builtin_trap();
    // Messages stay on one line whatever the input.
    if (std::strchr(e.what(), '\n') != nullptr) __builtin_trap();
  }
  return 0;
}
