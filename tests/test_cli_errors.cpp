// Bad input through the CLI: each case gives a one-line `error: ...` naming the file, tensor or
// key, and exit code 2. Corrupted models are made from the golden model dsv_b (single f16 file).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>

#include "indexcache/safetensors.h"
#include "test_util.h"

namespace indexcache {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::run_cli;

const std::string kSource = test::test_data_dir() + "/golden/dsv_b";

// A copy of the golden model in a fresh temp dir.
std::string copy_model(const std::string& tag) {
  const std::string dir = test::make_temp_dir(tag);
  for (const char* f : {"config.json", "model.safetensors", "ids.txt"})
    fs::copy_file(kSource + "/" + f, dir + "/" + f);
  return dir;
}

// Rewrites the safetensors header of `path` through `edit`, keeping the data block.
void edit_header(const std::string& path, const std::function<void(json&)>& edit) {
  const std::string bytes = test::read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  json header = json::parse(bytes.substr(8, n));
  edit(header);
  std::string text = header.dump();
  while (text.size() % 8) text += ' ';
  uint64_t m = text.size();
  std::string out(reinterpret_cast<const char*>(&m), 8);
  test::write_file(path, out + text + bytes.substr(8 + n));
}

void edit_config(const std::string& dir, const std::function<void(json&)>& edit) {
  json j = json::parse(test::read_file(dir + "/config.json"));
  edit(j);
  test::write_file(dir + "/config.json", j.dump(2));
}

// Runs dump on `dir` and checks the error contract: exit 2, one line starting `error: `, and each
// of `needles` in it.
void expect_bad_input(const std::string& dir, const std::vector<std::string>& needles,
                      const std::string& extra = "") {
  auto r = run_cli("dump -m " + dir + " --ids " + kSource + "/ids.txt --out " + dir + "/out.safetensors " + extra);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(r.output.rfind("error: ", 0), 0u) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  for (const auto& n : needles) EXPECT_NE(r.output.find(n), std::string::npos) << "missing '" << n << "' in " << r.output;
  EXPECT_FALSE(fs::exists(dir + "/out.safetensors"));
}

TEST(CliErrors, TruncatedSafetensors) {
  const std::string dir = copy_model("trunc");
  fs::resize_file(dir + "/model.safetensors", 5);
  expect_bad_input(dir, {"model.safetensors"});
}

TEST(CliErrors, HeaderLengthPastEnd) {
  const std::string dir = copy_model("hdrlen");
  std::string bytes = test::read_file(dir + "/model.safetensors");
  uint64_t n = bytes.size() + 100;
  std::memcpy(bytes.data(), &n, 8);
  test::write_file(dir + "/model.safetensors", bytes);
  expect_bad_input(dir, {"model.safetensors"});
}

TEST(CliErrors, TensorOffsetsOutsideData) {
  const std::string dir = copy_model("offsets");
  edit_header(dir + "/model.safetensors", [](json& h) {
    auto& t = h["model.norm.weight"];
    const uint64_t len = t["data_offsets"][1].get<uint64_t>() - t["data_offsets"][0].get<uint64_t>();
    t["data_offsets"] = {uint64_t{1} << 40, (uint64_t{1} << 40) + len};
  });
  expect_bad_input(dir, {"model.safetensors", "model.norm.weight"});
}

TEST(CliErrors, OverlappingTensors) {
  const std::string dir = copy_model("overlap");
  edit_header(dir + "/model.safetensors", [](json& h) {
    // Two [hidden] tensors: make the second share the first's bytes.
    h["model.layers.0.post_attention_layernorm.weight"]["data_offsets"] =
        h["model.layers.0.input_layernorm.weight"]["data_offsets"];
  });
  expect_bad_input(dir, {"model.safetensors", "overlap"});
}

TEST(CliErrors, ShapeDisagreesWithConfig) {
  const std::string dir = copy_model("shape");
  std::vector<int64_t> shape;
  edit_header(dir + "/model.safetensors", [&](json& h) {
    auto& t = h["model.layers.1.self_attn.q_a_proj.weight"];
    shape = t["shape"].get<std::vector<int64_t>>();
    t["shape"] = {shape[1], shape[0]};
  });
  expect_bad_input(dir, {"model.safetensors", "model.layers.1.self_attn.q_a_proj.weight", "shape"});
}

TEST(CliErrors, DtypeDisagreesWithConfig) {
  const std::string dir = copy_model("dtype");
  edit_header(dir + "/model.safetensors",
              [](json& h) { h["model.layers.0.self_attn.kv_b_proj.weight"]["dtype"] = "I16"; });
  expect_bad_input(dir, {"model.safetensors", "model.layers.0.self_attn.kv_b_proj.weight", "dtype"});
}

TEST(CliErrors, MissingTensor) {
  const std::string dir = copy_model("missing");
  edit_header(dir + "/model.safetensors", [](json& h) { h.erase("model.layers.2.self_attn.o_proj.weight"); });
  expect_bad_input(dir, {"model.layers.2.self_attn.o_proj.weight", "missing"});
}

TEST(CliErrors, InvalidConfigJson) {
  const std::string dir = copy_model("json");
  test::write_file(dir + "/config.json", "{\"model_type\": \"deepseek_v32\", ");
  expect_bad_input(dir, {"config.json", "JSON"});
}

TEST(CliErrors, ConfigWithoutQLora) {
  const std::string dir = copy_model("qlora");
  edit_config(dir, [](json& j) { j["q_lora_rank"] = nullptr; });
  expect_bad_input(dir, {"config.json", "q_lora_rank"});
}

TEST(CliErrors, ConfigNotDsa) {
  const std::string dir = copy_model("notdsa");
  edit_config(dir, [](json& j) { j["model_type"] = "llama"; });
  expect_bad_input(dir, {"config.json", "model_type", "llama"});
}

TEST(CliErrors, ConfigBadIndexerTypes) {
  const std::string dir = copy_model("itypes");
  edit_config(dir, [](json& j) { j["indexer_types"] = {"full", "bogus", "full", "full"}; });
  expect_bad_input(dir, {"config.json", "indexer_types", "bogus"});
}

TEST(CliErrors, ConfigPatternStartsShared) {
  const std::string dir = copy_model("pattern");
  edit_config(dir, [](json& j) {
    j.erase("indexer_types");
    j["index_topk_pattern"] = "SFFF";
  });
  expect_bad_input(dir, {"config.json", "index_topk_pattern", "layer 0"});
}

TEST(CliErrors, PlanLeadingShared) { expect_bad_input(copy_model("plan0"), {"SFFF", "layer 0"}, "--plan SFFF"); }
TEST(CliErrors, PlanWrongLength) { expect_bad_input(copy_model("plan1"), {"FSF", "3 layers"}, "--plan FSF"); }
TEST(CliErrors, PlanUnknownLetter) { expect_bad_input(copy_model("plan2"), {"FXFF", "'X'"}, "--plan FXFF"); }
TEST(CliErrors, PlanGarbage) { expect_bad_input(copy_model("plan3"), {"--plan"}, "--plan 1/0"); }

TEST(CliErrors, IdsFileNotNumbers) {
  const std::string dir = copy_model("ids");
  test::write_file(dir + "/bad_ids.txt", "1 2 three 4");
  auto r = run_cli("dump -m " + dir + " --ids " + dir + "/bad_ids.txt --out " + dir + "/o.safetensors");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("bad_ids.txt"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("three"), std::string::npos) << r.output;
}

TEST(CliErrors, TokenOutsideVocabulary) {
  const std::string dir = copy_model("vocab");
  test::write_file(dir + "/big_ids.txt", "1 2 999999");
  auto r = run_cli("dump -m " + dir + " --ids " + dir + "/big_ids.txt --out " + dir + "/o.safetensors");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("999999"), std::string::npos) << r.output;
}

TEST(CliErrors, MissingModelDirectory) {
  auto r = run_cli("info -m /nonexistent/model");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("/nonexistent/model"), std::string::npos) << r.output;
}

TEST(CliErrors, UnknownFlagIsUsageError) {
  auto r = run_cli("dump --frobnicate");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(r.output.rfind("error: ", 0), 0u) << r.output;
}

// S layers need no indexer weights: drop layer 1's indexer and run a plan where layer 1 is S;
// the same checkpoint with layer 1 as F names the missing tensor.
TEST(CliErrors, SharedLayersNeedNoIndexerWeights) {
  const std::string dir = copy_model("noindexer");
  edit_header(dir + "/model.safetensors", [](json& h) {
    for (auto it = h.begin(); it != h.end();) {
      if (it.key().rfind("model.layers.1.self_attn.indexer.", 0) == 0)
        it = h.erase(it);
      else
        ++it;
    }
  });
  auto ok = run_cli("dump -m " + dir + " --ids " + kSource + "/ids.txt --out " + dir + "/o.safetensors --plan FSSS");
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  auto got = SafetensorsFile::open(dir + "/o.safetensors");
  auto want = SafetensorsFile::open(kSource + "/expected.FSSS.safetensors");
  const TensorInfo* a = got->find("logits");
  const TensorInfo* b = want->find("logits");
  ASSERT_TRUE(a && b);
  ASSERT_EQ(a->nbytes, b->nbytes);
  const float* x = reinterpret_cast<const float*>(got->data(*a));
  const float* y = reinterpret_cast<const float*>(want->data(*b));
  double num = 0, den = 0;
  for (int64_t i = 0; i < a->numel(); ++i) {
    num = std::max(num, static_cast<double>(std::fabs(x[i] - y[i])));
    den = std::max(den, static_cast<double>(std::fabs(y[i])));
  }
  EXPECT_LE(num / den, 1e-4);
  expect_bad_input(dir, {"model.layers.1.self_attn.indexer", "missing"}, "--plan FFSS");
}

// Device flags: a CUDA device that does not exist (no CUDA in the build, none on the machine, or
// an ordinal past the last one) is one clear line and exit 1 on every host; bad values exit 2.
TEST(CliErrors, DeviceFlags) {
  const std::string common = "generate -p hello -n 2";
  auto r = run_cli(common + " --device cuda --gpu 99");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(r.output.rfind("error: ", 0), 0u) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  std::string lower = r.output;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  EXPECT_NE(lower.find("cuda"), std::string::npos) << r.output;
  for (const char* bad : {"--device tpu", "--threads -2", "--gpu 1", "--device cuda --precision fp4"}) {
    auto b = run_cli(common + " " + bad);
    EXPECT_EQ(b.exit_code, 2) << bad << ": " << b.output;
    EXPECT_EQ(std::count(b.output.begin(), b.output.end(), '\n'), 1) << bad << ": " << b.output;
  }
}

}  // namespace
}  // namespace indexcache
