// The arguments of `indexcache bench` (hand-parsed: the self-contained GPU build has no CLI11),
// and their resolution against a preset: contexts within its positions, plans parsed for its
// layer count. Every bad value throws Error(kBadInput) with a one-line message naming the flag.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bench/presets.h"
#include "indexcache/index_plan.h"

namespace indexcache::bench {

enum class Device { kCpu, kCuda };

struct BenchOptions {
  Device device = Device::kCpu;
  std::string preset;  // empty: dsa-mini on the CPU, glm47flash-dsa on the GPU
  int layers = 0;   // 0: the preset's
  int experts = 0;  // 0: the preset's
  std::vector<int64_t> ctx = {1024};
  std::vector<std::string> plans = {"full", "1/2", "1/4"};
  bool prefill = true;
  bool decode = true;
  int decode_steps = 0;  // 0: the device's default (cpu 16, cuda 32)
  int64_t chunk = 0;     // 0: the device's default (cpu 2048, cuda 8192)
  int repeat = 1;        // timed runs per cell; the median is reported
  bool cuda_graphs = true;
  bool engine_session = false;  // --engine session (cuda): the one Session on the CUDA backend, not the GPU runner
  bool engine_profile = false;  // --engine session-profile: the same with op classes (every op synchronised)
  bool indexer_fp8 = false;   // --indexer fp8 (cuda only): the e4m3 lightning indexer
  bool indexer_hadamard = false;  // --indexer fp8-hadamard: e4m3 after the Walsh-Hadamard rotation
  bool json = false;          // JSON instead of markdown on stdout
  std::string json_out;       // also write the JSON here
  bool quiet = false;         // no progress lines on stderr
  uint64_t seed = 1;
  bool help = false;
  std::string command_line;   // the arguments as given, for the report
};

// Parses the arguments after `bench` (`--flag value` or `--flag=value`).
BenchOptions parse_bench_args(const std::vector<std::string>& args);
std::string bench_usage();

// "4096" -> 4096, "10K" / "10k" -> 10240. Throws naming `flag` otherwise.
int64_t parse_token_count(const std::string& text, const std::string& flag);

struct NamedPlan {
  std::string text;  // as given (trimmed)
  IndexPlan plan;
};

// Options resolved against their preset.
struct BenchSetup {
  BenchOptions options;
  Preset preset;
  std::vector<NamedPlan> plans;
  int decode_steps = 0;  // resolved default
  int64_t chunk = 0;     // resolved default
  int64_t max_context() const;  // largest ctx, plus decode steps when decoding
};

// Builds the preset, checks every ctx (and ctx + decode steps) against max_position_embeddings,
// parses the plans. Throws Error(kBadInput).
BenchSetup resolve_bench(const BenchOptions& options);

}  // namespace indexcache::bench
