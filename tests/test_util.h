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

// The CLI's exit code, stdout and stderr apart (the hostile-input suites check that stderr is one
// line). Runs under a 30 s timeout (exit 124 on a hang) and a 4 GiB memory limit, so a regression
// that hangs or allocates without bound fails its case instead of the machine: an address-space
// limit, or under the sanitizers (which reserve terabytes of address space) ASan's RSS limit.
// `scratch` is a directory for the captured streams.
struct SplitResult {
  int exit_code = -1;
  std::string out, err;
};
SplitResult run_cli_split(const std::string& args, const std::string& scratch);

// A safetensors image: the 8-byte little-endian header length, the header text, the data block.
std::string safetensors_image(const std::string& header, const std::string& data = "");

inline std::string test_data_dir() { return INDEXCACHE_TEST_DATA; }

}  // namespace indexcache::test
