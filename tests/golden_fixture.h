// Golden fixtures written by scripts/make_goldens.py (transformers 5.17, f32): one directory per
// model under tests/data/golden, one expected.<PLAN>.safetensors per plan.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace indexcache::test {

struct GoldenCase {
  std::string model_dir;
  std::string expected_path;
  std::string plan;  // F/S string
  std::string name() const;
};
// gtest prints a case by its name (not its bytes).
inline void PrintTo(const GoldenCase& c, std::ostream* os) { *os << c.name(); }

// Every (model, plan) fixture of a set (a folder under tests/data: "golden", or "golden_fp8" for
// the block-FP8 checkpoints of scripts/make_fp8_goldens.py), sorted; empty if none are present.
std::vector<GoldenCase> golden_cases(const std::string& set = "golden");
std::vector<std::string> golden_model_dirs(const std::string& set = "golden");

}  // namespace indexcache::test
