// `indexcache generate` on the embedded model: deterministic greedy output, chunked prefill giving
// the same text, the timing line, and bad input (empty prompt, over-long prompt, invalid UTF-8,
// malformed tokenizer.json, bad sampling flags) each a one-line error with exit code 2.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>

#include "test_util.h"

namespace indexcache {
namespace {

namespace fs = std::filesystem;
using test::run_cli;

const std::string kModel = fs::weakly_canonical(std::string(INDEXCACHE_TEST_DATA) + "/../../models/dsa-mini").string();

// The generated text: stdout minus the timing line (stderr, merged by run_cli).
std::string text_of(const std::string& output) {
  const size_t p = output.find("plan ");
  return output.substr(0, p == std::string::npos ? output.size() : p);
}

void expect_error(const std::string& args, const std::vector<std::string>& needles) {
  auto r = run_cli(args);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(r.output.rfind("error: ", 0), 0u) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  for (const auto& n : needles) EXPECT_NE(r.output.find(n), std::string::npos) << "missing '" << n << "' in " << r.output;
}

TEST(GenerateCli, GreedyIsDeterministicAndChunkingChangesNothing) {
  const std::string base = "generate -m " + kModel + " -p 'The pass key is 12345. Remember it. The pass key is' -n 12";
  auto a = run_cli(base);
  ASSERT_EQ(a.exit_code, 0) << a.output;
  EXPECT_NE(a.output.find("prefill"), std::string::npos);
  EXPECT_NE(a.output.find("tok/s"), std::string::npos);
  auto b = run_cli(base + " --chunk 3");
  ASSERT_EQ(b.exit_code, 0) << b.output;
  EXPECT_EQ(text_of(a.output), text_of(b.output));
  auto c = run_cli(base + " --chunk 1 --plan 1/4");
  ASSERT_EQ(c.exit_code, 0) << c.output;
  EXPECT_FALSE(text_of(c.output).empty());
}

TEST(GenerateCli, SeededSamplingReproduces) {
  const std::string base = "generate -m " + kModel + " -p 'Once upon a time' -n 16 --temp 0.9 --top-p 0.95 --seed 7";
  auto a = run_cli(base), b = run_cli(base);
  ASSERT_EQ(a.exit_code, 0) << a.output;
  EXPECT_EQ(text_of(a.output), text_of(b.output));
}

TEST(GenerateCli, EmptyPrompt) { expect_error("generate -m " + kModel + " -p ''", {"-p", "prompt"}); }

TEST(GenerateCli, PromptLongerThanMaxPositions) {
  std::string words;
  for (int i = 0; i < 3000; ++i) words += "zebra quartz ";  // well over 4096 tokens
  expect_error("generate -m " + kModel + " -p '" + words + "'", {"max_position_embeddings", "4096"});
}

TEST(GenerateCli, InvalidUtf8) {
  expect_error("generate -m " + kModel + " -p \"$(printf 'ok \\377 bad')\"", {"invalid UTF-8", "byte 3"});
}

TEST(GenerateCli, MalformedTokenizer) {
  const std::string dir = test::make_temp_dir("badtok");
  for (const auto& e : fs::directory_iterator(kModel)) {
    const std::string name = e.path().filename().string();
    if (name == "tokenizer.json") continue;
    fs::create_symlink(e.path(), dir + "/" + name);
  }
  test::write_file(dir + "/tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": ");
  expect_error("generate -m " + dir + " -p 'hello'", {"tokenizer.json"});
  test::write_file(dir + "/tokenizer.json", R"({"model": {"type": "WordPiece", "vocab": {}}})");
  expect_error("generate -m " + dir + " -p 'hello'", {"tokenizer.json", "WordPiece"});
}

TEST(GenerateCli, BadSamplingFlags) {
  expect_error("generate -m " + kModel + " -p 'hi' --temp -1", {"--temp"});
  expect_error("generate -m " + kModel + " -p 'hi' --top-p 0", {"--top-p"});
  expect_error("generate -m " + kModel + " -p 'hi' --chunk -2", {"--chunk"});
  expect_error("generate -m " + kModel + " -p 'hi' -n -1", {"-n"});
}

}  // namespace
}  // namespace indexcache
