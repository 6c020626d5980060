// Golden fixtures written by scripts/make_goldens.py (transformers 5.17, f32): one directory per
// model under tests/data/golden, one expected.<PLAN>.safetensors per plan.
#pragma once

#include <string>
#include <vector>

namespace indexcache::test {

struct GoldenCase {
  std::string model_dir;
  std::string expected_path;
  std::string plan;  // F/S string
  std::string name() const;
};

// Every (model, plan) fixture, sorted; empty if none are present.
std::vector<GoldenCase> golden_cases();
std::vector<std::string> golden_model_dirs();

}  // namespace indexcache::test
