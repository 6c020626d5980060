// `indexcache bench` through the CLI: every bad argument is one line `error: ...` with exit 2
// (a CUDA request without CUDA: a one-line error, exit 1 or 2), a real CPU run of the tiny preset
// prints the rows of its matrix in markdown and valid JSON with positive times, and --mode
// calibrate runs the greedy search on it and reports its counts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace indexcache {
namespace {

using nlohmann::json;
using test::run_cli;

bool one_error_line(const std::string& out) {
  return out.rfind("error: ", 0) == 0 && std::count(out.begin(), out.end(), '\n') == 1;
}

void expect_bad_input(const std::string& args, const std::vector<std::string>& needles) {
  auto r = run_cli("bench " + args);
  EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.output;
  EXPECT_TRUE(one_error_line(r.output)) << args << "\n" << r.output;
  for (const auto& n : needles)
    EXPECT_NE(r.output.find(n), std::string::npos) << "missing '" << n << "' in " << r.output;
}

TEST(BenchCli, UnknownPreset) { expect_bad_input("--synthetic nope --ctx 256", {"--synthetic", "nope", "tiny"}); }

TEST(BenchCli, BadContext) {
  expect_bad_input("--synthetic tiny --ctx 10X", {"--ctx", "10X"});
  expect_bad_input("--synthetic tiny --ctx 0", {"--ctx"});
  expect_bad_input("--synthetic tiny --ctx 256,,512", {"--ctx", "empty"});
  expect_bad_input("--synthetic tiny --ctx -5", {"--ctx"});
  expect_bad_input("--synthetic tiny --ctx", {"--ctx", "required"});  // CLI11: "--ctx: 1 required LIST missing"
}

TEST(BenchCli, ContextOverMaxPositions) {
  expect_bad_input("--synthetic tiny --ctx 100K", {"--ctx", "max_position_embeddings"});
  // ctx fits but ctx + decode steps does not (tiny has 8192 positions).
  expect_bad_input("--synthetic tiny --ctx 8K --mode decode --decode-steps 4", {"--ctx", "decode steps"});
}

TEST(BenchCli, BadPlan) {
  expect_bad_input("--synthetic tiny --ctx 256 --plan full,FSXF", {"FSXF"});
  expect_bad_input("--synthetic tiny --ctx 256 --plan SFFF", {"SFFF"});
  expect_bad_input("--synthetic tiny --ctx 256 --plan FF", {"FF"});
  expect_bad_input("--synthetic tiny --ctx 256 --plan 1/x", {"1/x"});
}

TEST(BenchCli, BadModeAndOptions) {
  expect_bad_input("--synthetic tiny --ctx 256 --mode prefil", {"--mode", "prefil"});
  expect_bad_input("--synthetic tiny --ctx 256 --frobnicate 3", {"--frobnicate", "unknown option"});
  expect_bad_input("--synthetic tiny --ctx 256 --device tpu", {"--device", "tpu"});
  expect_bad_input("--synthetic tiny --ctx 256 --decode-steps 0", {"--decode-steps"});
  expect_bad_input("--synthetic tiny --ctx 256 --json=yes", {"--json"});
  expect_bad_input("--synthetic tiny --ctx 256 --indexer fp16", {"--indexer", "fp16", "bf16, fp8 or fp8-hadamard"});
  expect_bad_input("--synthetic tiny --ctx 256 --indexer fp8", {"--indexer fp8", "--device cuda"});
  expect_bad_input("--synthetic tiny --ctx 256 --indexer fp8-hadamard", {"--indexer fp8", "--device cuda"});
  expect_bad_input("--synthetic tiny --ctx 256 --engine turbo", {"--engine", "turbo", "runner, session"});
  expect_bad_input("--synthetic tiny --ctx 256 --seed -5", {"--seed"});
  expect_bad_input("--synthetic tiny --ctx 256 --repeat 0", {"--repeat"});
  expect_bad_input("--synthetic tiny --ctx 256 stray", {"stray", "unexpected argument"});
  expect_bad_input("--synthetic tiny --ctx 256 --threads -1", {"--threads"});
  expect_bad_input("--synthetic tiny --ctx 256 --gpu 1", {"--gpu", "--device cuda"});
}

TEST(BenchCli, BadCalibrate) {
  expect_bad_input("--synthetic tiny --mode calibrate,prefill", {"--mode calibrate", "alone"});
  expect_bad_input("--synthetic tiny --mode calibrate --ctx 256,512", {"--ctx", "one context"});
  expect_bad_input("--synthetic tiny --mode calibrate --ctx 1", {"--ctx", "2 tokens"});
  expect_bad_input("--synthetic tiny --mode calibrate --ctx 256 --keep-layers 5", {"--keep-layers", "[1, 4]"});
  expect_bad_input("--synthetic tiny --mode calibrate --ctx 256 --keep-layers 0", {"--keep-layers"});
  expect_bad_input("--synthetic tiny --mode calibrate --ctx 256 --windows 0", {"--windows"});
  expect_bad_input("--synthetic tiny --mode calibrate --ctx 256 --plan 1/2", {"--plan", "calibrate"});
  expect_bad_input("--synthetic tiny --mode calibrat --ctx 256", {"--mode", "calibrat"});
}

TEST(BenchCli, BadTrim) {
  expect_bad_input("--synthetic tiny --layers 0", {"--layers"});
  expect_bad_input("--synthetic tiny --layers 99", {"--layers", "4"});
  expect_bad_input("--synthetic tiny --experts 1", {"--experts"});
  expect_bad_input("--synthetic dsv32 --experts 12", {"--experts", "n_group"});
}

TEST(BenchCli, PresetTooBigForCpu) {
  expect_bad_input("--device cpu --synthetic glm5 --ctx 1K", {"glm5", "RAM", "--layers", "--experts"});
}

// CLI11's help for the subcommand: every flag, the presets and the calibrate mode.
TEST(BenchCli, Help) {
  auto r = run_cli("bench --help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("Usage:"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(" bench [OPTIONS]"), std::string::npos) << r.output;
  for (const char* flag : {"--device", "--gpu", "--threads", "--synthetic", "--layers", "--experts", "--ctx", "--plan",
                           "--mode", "--windows", "--keep-layers", "--decode-steps", "--chunk", "--repeat",
                           "--no-graphs", "--engine", "--indexer", "--seed", "--json", "--json-out", "--quiet"})
    EXPECT_NE(r.output.find(std::string("  ") + flag + " "), std::string::npos) << "no " << flag << " in\n" << r.output;
  for (const char* word : {"tiny", "glm47flash-dsa", "calibrate", "session-profile", "fp8-hadamard", "K = 1024"})
    EXPECT_NE(r.output.find(word), std::string::npos) << "no " << word << " in\n" << r.output;
}

void expect_positive(const json& v, const std::string& what) {
  ASSERT_TRUE(v.is_number()) << what << ": " << v.dump();
  EXPECT_GT(v.get<double>(), 0.0) << what;
}

// --device cuda: without a usable GPU a clear one-line error; with one, a real run whose report
// names the GPU and holds the row asked for. Either way something is asserted.
TEST(BenchCli, DeviceCudaRunsOrIsAClearError) {
  const std::string dir = test::make_temp_dir("bench-cuda");
  const std::string out = dir + "/bench.json";
  auto r = run_cli("bench --device cuda --synthetic tiny --ctx 256 --plan full --mode prefill --quiet --json-out " + out);
  if (r.exit_code == 0) {
    json j = json::parse(test::read_file(out), nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << test::read_file(out);
    EXPECT_EQ(j["machine"]["device"], "cuda") << j["machine"].dump();
    ASSERT_EQ(j["rows"].size(), 1u);
    expect_positive(j["rows"][0]["prefill_s"], "prefill_s");
    return;
  }
  EXPECT_TRUE(r.exit_code == 1 || r.exit_code == 2) << r.output;
  EXPECT_TRUE(one_error_line(r.output)) << r.output;
  std::string lower = r.output;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  EXPECT_TRUE(lower.find("cuda") != std::string::npos || lower.find("gpu") != std::string::npos) << r.output;
}

TEST(BenchCli, CpuRunOfTinyPreset) {
  const std::string dir = test::make_temp_dir("bench");
  const std::string out = dir + "/bench.json";
  auto r = run_cli("bench --device cpu --synthetic tiny --ctx 256,512 --plan full,1/2 --mode prefill,decode "
                   "--decode-steps 4 --quiet --json-out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* row : {"| 256 | full |", "| 256 | 1/2 |", "| 512 | full |", "| 512 | 1/2 |"})
    EXPECT_NE(r.output.find(row), std::string::npos) << "missing row " << row << " in\n" << r.output;
  EXPECT_NE(r.output.find("prefill s"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("tiny"), std::string::npos) << r.output;

  json j = json::parse(test::read_file(out), nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << test::read_file(out);
  EXPECT_EQ(j["preset"]["name"], "tiny");
  EXPECT_EQ(j["machine"]["device"], "cpu");
  ASSERT_TRUE(j["rows"].is_array());
  ASSERT_EQ(j["rows"].size(), 4u);
  for (const auto& row : j["rows"]) {
    const std::string what = row["plan"].get<std::string>() + " @ " + std::to_string(row["ctx"].get<int>());
    expect_positive(row["prefill_s"], what + " prefill_s");
    expect_positive(row["decode_tok_s"], what + " decode_tok_s");
    expect_positive(row["prefill"]["classes"]["indexer"], what + " indexer seconds");
    expect_positive(row["prefill"]["classes"]["attention"], what + " attention seconds");
    expect_positive(row["prefill"]["flops"]["indexer"], what + " indexer flops");
    expect_positive(row["speedup_vs_full"], what + " speed-up");
    EXPECT_EQ(row["decode"]["tokens"], 4) << what;
    if (row["plan"] == "full") {
      EXPECT_EQ(row["full_layers"], 4) << what;
      EXPECT_DOUBLE_EQ(row["speedup_vs_full"].get<double>(), 1.0) << what;
    } else {
      EXPECT_EQ(row["full_layers"], 2) << what;
      EXPECT_EQ(row["pattern"], "FSFS") << what;
    }
  }
}

TEST(BenchCli, JsonOnStdout) {
  auto r = run_cli("bench --synthetic tiny --ctx 300 --plan 1/4 --mode prefill --json --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  json j = json::parse(r.output, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.output;
  ASSERT_EQ(j["rows"].size(), 1u);
  expect_positive(j["rows"][0]["prefill_s"], "prefill_s");
  EXPECT_TRUE(j["rows"][0]["decode"].is_null());
  EXPECT_TRUE(j["rows"][0]["speedup_vs_full"].is_null());  // no full plan in the matrix
}

// The steps of a calibrate run of the tiny preset (4 layers) with `keep` F layers left and
// `windows` windows: one step per flipped layer, each with one F layer fewer, the naive count the
// search's formula gives, fewer layer-forwards than it.
void expect_calibrate_counts(const json& j, int keep, int windows, int64_t ctx) {
  ASSERT_EQ(j["mode"], "calibrate") << j.dump();
  const int layers = j["preset"]["layers"].get<int>();
  ASSERT_EQ(layers, 4);
  const json& c = j["calibrate"];
  EXPECT_EQ(c["ctx"], ctx);
  EXPECT_EQ(c["windows"], windows);
  EXPECT_EQ(c["keep_layers"], keep);
  ASSERT_TRUE(c["steps"].is_array());
  ASSERT_EQ(c["steps"].size(), static_cast<size_t>(layers - keep)) << c.dump();
  EXPECT_EQ(c["steps_taken"], layers - keep);
  // Naive: the all-F run, then a full forward of every candidate (the F layers after layer 0) of every step.
  int64_t naive_runs = 1;
  for (int f = layers; f > keep; --f) naive_runs += f - 1;
  EXPECT_EQ(c["naive_layer_forwards"].get<int64_t>(), naive_runs * layers * windows);
  EXPECT_LT(c["layer_forwards"].get<int64_t>(), c["naive_layer_forwards"].get<int64_t>());
  std::string last = std::string(layers, 'F');
  for (size_t i = 0; i < c["steps"].size(); ++i) {
    const std::string plan = c["steps"][i]["plan"].get<std::string>();
    ASSERT_EQ(plan.size(), static_cast<size_t>(layers)) << plan;
    EXPECT_EQ(std::count(plan.begin(), plan.end(), 'F'), layers - 1 - static_cast<int>(i)) << plan;
    EXPECT_EQ(plan[0], 'F') << plan;
    const int flipped = c["steps"][i]["flipped"].get<int>();
    ASSERT_TRUE(flipped >= 1 && flipped < layers) << flipped;
    EXPECT_EQ(last[flipped], 'F') << "step " << i + 1 << " flips layer " << flipped << " again";
    last[flipped] = 'S';
    EXPECT_EQ(plan, last) << "step " << i + 1;
  }
  const std::string plan = c["plan"].get<std::string>();
  EXPECT_EQ(plan, last);
  EXPECT_EQ(std::count(plan.begin(), plan.end(), 'F'), keep) << plan;
  EXPECT_EQ(c["full_layers"], keep);
  EXPECT_GT(c["device_bytes_in_use_peak"].get<int64_t>(), 0);
}

TEST(BenchCli, CalibrateOnCpuOfTinyPreset) {
  const std::string dir = test::make_temp_dir("bench-calibrate");
  const std::string out = dir + "/calibrate.json";
  // Default stop: a quarter of the 4 layers, so 3 steps.
  auto r = run_cli("bench --device cpu --synthetic tiny --mode calibrate --ctx 256 --windows 2 --quiet --json-out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* text : {"--mode calibrate: tiny", "| step | layer -> S |", "layer-forwards: ", "vs naive", "plan found: `"})
    EXPECT_NE(r.output.find(text), std::string::npos) << "no '" << text << "' in\n" << r.output;
  json j = json::parse(test::read_file(out), nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << test::read_file(out);
  EXPECT_EQ(j["machine"]["device"], "cpu");
  EXPECT_EQ(j["calibrate"]["backend"], "cpu");
  expect_calibrate_counts(j, /*keep=*/1, /*windows=*/2, /*ctx=*/256);

  // --keep-layers, one window, JSON on stdout.
  auto k = run_cli("bench --synthetic tiny --mode calibrate --ctx 200 --windows 1 --keep-layers 2 --json --quiet");
  ASSERT_EQ(k.exit_code, 0) << k.output;
  json jk = json::parse(k.output, nullptr, false);
  ASSERT_FALSE(jk.is_discarded()) << k.output;
  expect_calibrate_counts(jk, /*keep=*/2, /*windows=*/1, /*ctx=*/200);
}

// --device cuda --mode calibrate runs the Session on the CUDA backend (never the GPU runner): with a
// GPU, the same counts as on the CPU; without one, one clear line.
TEST(BenchCli, CalibrateOnCudaRunsOrIsAClearError) {
  auto r = run_cli("bench --device cuda --synthetic tiny --mode calibrate --ctx 128 --windows 1 --json --quiet");
  if (r.exit_code == 0) {
    json j = json::parse(r.output, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << r.output;
    EXPECT_EQ(j["machine"]["device"], "cuda");
    EXPECT_EQ(j["calibrate"]["backend"].get<std::string>().rfind("cuda:", 0), 0u) << j["calibrate"].dump();
    expect_calibrate_counts(j, /*keep=*/1, /*windows=*/1, /*ctx=*/128);
    return;
  }
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(one_error_line(r.output)) << r.output;
  EXPECT_NE(r.output.find("cuda"), std::string::npos) << r.output;
}

TEST(BenchCli, BadServe) {
  expect_bad_input("--synthetic tiny --mode serve,decode", {"--mode serve", "alone"});
  expect_bad_input("--synthetic tiny --mode serve --clients 0", {"--clients"});
  expect_bad_input("--synthetic tiny --mode serve --device cuda", {"--mode serve", "CPU-only"});
}

// Every client's tokens counted once, the pool sized for every client's whole request, and the
// latency percentiles ordered and within the run.
TEST(BenchCli, ServeOnCpuOfTinyPreset) {
  auto r = run_cli("bench --synthetic tiny --mode serve --ctx 100 --plan full,1/2 --clients 3 --decode-steps 5 --json --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  json j = json::parse(r.output, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.output;
  ASSERT_EQ(j["serve"].size(), 2u) << r.output;
  for (const json& w : j["serve"]) {
    EXPECT_EQ(w["clients"], 3);
    EXPECT_EQ(w["output_tokens"], 5);
    EXPECT_EQ(w["generated"], 15) << w.dump();
    EXPECT_EQ(w["pages"], 3 * 2) << w.dump();  // ceil(105 / 64) pages per client
    const json& t = w["ttft_s"];
    EXPECT_LE(t["p50"].get<double>(), t["p90"].get<double>());
    EXPECT_LE(t["p90"].get<double>(), t["p99"].get<double>());
    EXPECT_LE(t["p99"].get<double>(), w["seconds"].get<double>());
    EXPECT_GT(t["p50"].get<double>(), 0);
    EXPECT_NEAR(w["total_tok_s"].get<double>(), 15 / w["seconds"].get<double>(), 1e-6 * w["total_tok_s"].get<double>());
  }
  EXPECT_EQ(j["serve"][1]["full_layers"], 2);
}

}  // namespace
}  // namespace indexcache
