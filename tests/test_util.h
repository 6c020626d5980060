// Shared helpers for tests: temp dirs, running the CLI, reading fixtures.
#pragma once

#include <string>

namespace indexcache::test {

// A fresh empty directory under the system temp dir, removed at process exit.
std::string make_temp_dir(const std::string& tag);
void write_file(const std::string& path, const std::string& contents);
std::string read_file(const std::string& path);

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};
// Runs the indexcache CLI with `args` (a shell-quoted string) and captures its output.
CommandResult run_cli(const std::string& args);

inline std::string test_data_dir() { return INDEXCACHE_TEST_DATA; }

}  // namespace indexcache::test
