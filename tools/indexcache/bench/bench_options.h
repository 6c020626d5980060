// The options of `indexcache bench` (its flags are registered in tools/indexcache/cmd_bench.cpp)
// and their resolution against a preset: contexts within its positions, plans parsed for its
// layer count. Every bad value throws Error(kBadInput) with a one-line message naming the flag.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bench/presets.h"
#include "indexcache/device.h"
#include "indexcache/index_plan.h"

namespace indexcache::bench {

// What runs the prefill / decode matrix on --device cuda (calibrate always runs the Session).
enum class Engine {
  kRunner,          // the GPU runner (SyntheticGpuModel)
  kSession,         // the one Session on the CUDA backend
  kSessionProfile,  // the same with op classes (every op synchronised)
};

struct BenchOptions {
  Device device;       // --device, --gpu, --threads, --precision
  std::string preset;  // empty: dsa-mini on the CPU, glm47flash-dsa on the GPU
  int layers = 0;   // 0: the preset's
  int experts = 0;  // 0: the preset's
  std::vector<int64_t> ctx = {1024};
  std::vector<std::string> plans = {"full", "1/2", "1/4"};
  bool plans_given = false;  // --plan was given (calibrate finds its own plan, so refuses one)
  bool prefill = true;
  bool decode = true;
  bool calibrate = false;  // --mode calibrate: the greedy search instead of the ctx x plan matrix
  bool serve = false;      // --mode serve: concurrent requests through the scheduler, per ctx x plan
  int clients = 8;         // serve: concurrent requests of ctx prompt tokens, decode_steps new ones each
  int windows = 2;         // calibrate: random token windows of ctx tokens
  int keep_layers = 0;     // calibrate: stop at this many F layers (0: a quarter of the layers, rounded up)
  int decode_steps = 0;  // 0: the device's default (cpu 16, cuda 32)
  int64_t chunk = 0;     // 0: the device's default (cpu 2048, cuda 8192)
  int repeat = 1;        // timed runs per cell; the median is reported
  bool cuda_graphs = true;
  Engine engine = Engine::kRunner;
  bool indexer_fp8 = false;   // --indexer fp8 (cuda only): the e4m3 lightning indexer
  bool indexer_hadamard = false;  // --indexer fp8-hadamard: e4m3 after the Walsh-Hadamard rotation
  bool json = false;          // JSON instead of markdown on stdout
  std::string json_out;       // also write the JSON here
  bool quiet = false;         // no progress lines on stderr
  uint64_t seed = 1;
  std::string command_line;   // the flags as parsed, for the report
};

// Comma-separated items, each trimmed; an empty item throws naming `flag`.
std::vector<std::string> split_list(const std::string& text, const std::string& flag);

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
  int keep_layers = 0;   // calibrate: resolved default
  int64_t max_context() const;  // largest ctx, plus decode steps when decoding
};

// Builds the preset, checks every ctx (and ctx + decode steps) against max_position_embeddings,
// parses the plans, checks the flags that do not go together. Throws Error(kBadInput).
BenchSetup resolve_bench(const BenchOptions& options);

}  // namespace indexcache::bench
