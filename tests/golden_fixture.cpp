#include "golden_fixture.h"

#include <algorithm>
#include <filesystem>

#include "test_util.h"

namespace indexcache::test {

namespace fs = std::filesystem;

std::string GoldenCase::name() const { return fs::path(model_dir).filename().string() + "_" + plan; }

std::vector<std::string> golden_model_dirs(const std::string& set) {
  std::vector<std::string> dirs;
  const fs::path root = fs::path(test_data_dir()) / set;
  if (!fs::is_directory(root)) return dirs;
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory() && fs::exists(e.path() / "config.json")) dirs.push_back(e.path().string());
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

std::vector<GoldenCase> golden_cases(const std::string& set) {
  std::vector<GoldenCase> cases;
  for (const auto& dir : golden_model_dirs(set)) {
    for (const auto& e : fs::directory_iterator(dir)) {
      const std::string f = e.path().filename().string();
      const std::string prefix = "expected.", suffix = ".safetensors";
      if (f.rfind(prefix, 0) != 0 || f.size() <= prefix.size() + suffix.size()) continue;
      if (f.compare(f.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
      cases.push_back({dir, e.path().string(), f.substr(prefix.size(), f.size() - prefix.size() - suffix.size())});
    }
  }
  std::sort(cases.begin(), cases.end(),
            [](const GoldenCase& a, const GoldenCase& b) { return a.expected_path < b.expected_path; });
  return cases;
}

}  // namespace indexcache::test
