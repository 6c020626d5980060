// Fuzzes calibrate's state file reader (state_from_json): any text either yields a state or
// throws indexcache::Error (bad input). A state that loads must survive state_to_json and read
// back the same. Anything else (a crash, a sanitizer report, another exception type) is a finding.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "indexcache/error.h"
#include "indexcache/report.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const indexcache::report::StateMeta meta{"model", 6, "0123456789abcdef", 3};
  try {
    const indexcache::CalibrationState s = indexcache::report::state_from_json(text, "state.json", meta);
    if (s.num_layers != 6 || !(s.full_loss >= 0) || !std::isfinite(s.full_loss) || s.steps.size() > 5) __builtin_trap();
    for (const auto& st : s.steps) {
      if (st.flipped < 1 || st.flipped >= 6 || !(st.loss >= 0)) __builtin_trap();
      for (const auto& c : st.candidates)
        if (c.layer < 0 || c.layer >= 6 || !(c.loss >= 0)) __builtin_trap();
    }
    const auto back = indexcache::report::state_from_json(indexcache::report::state_to_json(s, meta), "again", meta);
    if (back.plan() != s.plan() || back.steps.size() != s.steps.size() || back.full_loss != s.full_loss) __builtin_trap();
  } catch (const indexcache::Error& e) {
    if (e.kind() != indexcache::ErrorKind::kBadInput) __builtin_trap();
  }
  return 0;
}
