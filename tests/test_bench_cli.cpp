// `indexcache bench` through the CLI: every bad argument is one line `error: ...` with exit 2
// (a CUDA request without CUDA: a one-line error, exit 1 or 2), and a real CPU run of the tiny
// preset prints the rows of its matrix in markdown and valid JSON with positive times.
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
  expect_bad_input("--synthetic tiny --ctx", {"--ctx", "needs a value"});
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

// Without CUDA in the build, or without a GPU, --device cuda is a one-line error (exit 2 or 1);
// on a GPU machine the tiny preset's shapes are refused by the GPU kernels, also in one line.
TEST(BenchCli, Help) {
  auto r = run_cli("bench --help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("usage: indexcache bench"), std::string::npos) << r.output;
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

}  // namespace
}  // namespace indexcache
