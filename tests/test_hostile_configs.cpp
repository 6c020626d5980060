// Hostile config.json values, plans and CLI flags (issue 17). One table of cases, each run through
// the real CLI on a fresh copy of the golden model dsv_b (4 layers, 44 ids, no tokenizer): the
// exit code, stderr exactly one line starting "error: " (for a failing case), and a substring of
// it. Cases whose output would be NaN must not exit 0. A few direct library calls follow where they
// say more than the CLI can (the selection width, the freq/offset arithmetic, nesting).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "indexcache/device.h"
#include "indexcache/error.h"
#include "indexcache/index_plan.h"
#include "indexcache/model.h"
#include "indexcache/model_spec.h"
#include "indexcache/session.h"
#include "test_util.h"

namespace indexcache {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kSource = test::test_data_dir() + "/golden/dsv_b";

std::string copy_model(const std::string& tag) {
  const std::string dir = test::make_temp_dir("hostile-" + tag);
  for (const char* f : {"config.json", "model.safetensors", "ids.txt"}) fs::copy_file(kSource + "/" + f, dir + "/" + f);
  return dir;
}

void edit_config(const std::string& dir, const std::function<void(json&)>& edit) {
  json j = json::parse(test::read_file(dir + "/config.json"));
  edit(j);
  test::write_file(dir + "/config.json", j.dump(2));
}

// Sets every element of f16 tensor `name` of dir/model.safetensors, or row `row` only, to NaN.
void poison_tensor(const std::string& dir, const std::string& name, int64_t row = -1) {
  const std::string path = dir + "/model.safetensors";
  std::string bytes = test::read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const json h = json::parse(bytes.substr(8, n));
  const auto& t = h.at(name);
  ASSERT_EQ(t["dtype"], "F16");
  uint64_t b = t["data_offsets"][0].get<uint64_t>(), e = t["data_offsets"][1].get<uint64_t>();
  if (row >= 0) {
    const uint64_t row_bytes = t["shape"][1].get<uint64_t>() * 2;
    b += static_cast<uint64_t>(row) * row_bytes;
    e = b + row_bytes;
  }
  for (uint64_t i = b; i < e; i += 2) {
    bytes[8 + n + i] = '\x00';
    bytes[8 + n + i + 1] = '\x7e';  // f16 NaN 0x7e00
  }
  test::write_file(path, bytes);
}

std::vector<int> golden_ids() {
  std::vector<int> ids;
  std::istringstream in(test::read_file(kSource + "/ids.txt"));
  for (int v; in >> v;) ids.push_back(v);
  return ids;
}

// Single-quoted for /bin/sh (any byte but NUL survives, newlines and escapes included).
std::string sh_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// The CLI with `args` (already shell text), its streams kept in `dir` (memory- and time-limited:
// test::run_cli_split).
test::SplitResult run(const std::string& args, const std::string& dir) { return test::run_cli_split(args, dir); }

struct CliCase {
  std::string name;
  std::function<void(const std::string& dir)> setup;  // edits the copy (config, files); may be empty
  std::string args;                                    // "{d}" is the model copy's directory
  int exit_code;                                       // 2 bad input, 1 runtime, 0 success
  std::string needle;                                  // in stderr (a failure) or stdout (a success)
};

std::string expand(std::string s, const std::string& dir) {
  for (size_t p; (p = s.find("{d}")) != std::string::npos;) s.replace(p, 3, dir);
  return s;
}

const std::string kDump = "dump -m {d} --ids {d}/ids.txt --out {d}/out.safetensors";
const std::string kGen = "generate -m {d} --ids {d}/ids.txt -n 2";
const std::string kEval = "eval -m {d} --data {d}/ids.ids --ctx 44";

auto config(std::function<void(json&)> f) {
  return [f](const std::string& dir) { edit_config(dir, f); };
}
auto raw_config(std::string text) {
  return [text](const std::string& dir) { test::write_file(dir + "/config.json", text); };
}
auto yarn(json params) {
  return config([params](json& j) {
    json p = {{"rope_type", "yarn"}, {"rope_theta", 10000.0}, {"factor", 40.0}, {"original_max_position_embeddings", 4096},
              {"beta_fast", 32}, {"beta_slow", 1}, {"mscale", 1.0}, {"mscale_all_dim", 1.0}};
    p.update(params);
    j["rope_parameters"] = p;
  });
}
auto plan_file(std::string name, std::string text) {
  return [name, text](const std::string& dir) { test::write_file(dir + "/" + name, text); };
}
std::string nested(int depth) { return std::string(depth, '[') + std::string(depth, ']'); }

std::vector<CliCase> cases() {
  const int64_t big = int64_t{1} << 30;
  std::vector<CliCase> c = {
      // ---- config.json: JSON itself
      {"config_deep_nesting", raw_config("{\"model_type\": \"deepseek_v32\", \"x\": " + nested(100000) + "}"), kDump, 2,
       "nests deeper than"},
      {"config_not_object", raw_config("[1, 2]"), kDump, 2, "expected a JSON object"},
      {"config_empty", raw_config(""), kDump, 2, "empty"},
      {"config_truncated", raw_config("{\"model_type\": \"deepseek_v32\", "), kDump, 2, "invalid JSON"},
      // ---- missing keys and wrong types
      {"q_lora_missing", config([](json& j) { j.erase("q_lora_rank"); }), kDump, 2, "q_lora_rank"},
      {"hidden_size_string", config([](json& j) { j["hidden_size"] = "64"; }), kDump, 2, "key 'hidden_size': expected an integer"},
      {"hidden_size_float", config([](json& j) { j["hidden_size"] = 64.5; }), kDump, 2, "key 'hidden_size': expected an integer"},
      {"norm_topk_prob_string", config([](json& j) { j["norm_topk_prob"] = "yes"; }), kDump, 2, "norm_topk_prob"},
      {"model_type_missing", config([](json& j) { j.erase("model_type"); j.erase("architectures"); }), kDump, 2,
       "key 'model_type': missing"},
      // ---- unbounded sizes
      {"index_topk_2p24", config([](json& j) { j["index_topk"] = 1 << 24; }), kDump, 2, "key 'index_topk': value 16777216 out of range"},
      {"index_topk_zero", config([](json& j) { j["index_topk"] = 0; }), kDump, 2, "key 'index_topk'"},
      {"num_layers_2p30", config([&](json& j) { j["num_hidden_layers"] = big; }), kDump, 2, "key 'num_hidden_layers': value 1073741824 out of range"},
      {"num_layers_zero", config([](json& j) { j["num_hidden_layers"] = 0; }), kDump, 2, "key 'num_hidden_layers'"},
      {"hidden_size_negative", config([](json& j) { j["hidden_size"] = -64; }), kDump, 2, "key 'hidden_size': value -64 out of range"},
      {"hidden_size_2p30", config([&](json& j) { j["hidden_size"] = big; }), kDump, 2, "key 'hidden_size'"},
      {"heads_2p20", config([](json& j) { j["num_attention_heads"] = 1 << 20; j["num_key_value_heads"] = 1 << 20; }), kDump, 2,
       "key 'num_attention_heads'"},
      {"kv_lora_2p30", config([&](json& j) { j["kv_lora_rank"] = big; }), kDump, 2, "key 'kv_lora_rank'"},
      {"q_lora_2p30", config([&](json& j) { j["q_lora_rank"] = big; }), kDump, 2, "key 'q_lora_rank'"},
      {"rope_dim_2p30", config([&](json& j) { j["qk_rope_head_dim"] = big; }), kDump, 2, "key 'qk_rope_head_dim'"},
      {"nope_dim_2p30", config([&](json& j) { j["qk_nope_head_dim"] = big; }), kDump, 2, "key 'qk_nope_head_dim'"},
      {"v_dim_2p30", config([&](json& j) { j["v_head_dim"] = big; }), kDump, 2, "key 'v_head_dim'"},
      {"v_dim_zero", config([](json& j) { j["v_head_dim"] = 0; }), kDump, 2, "key 'v_head_dim'"},
      {"index_heads_2p30", config([&](json& j) { j["index_n_heads"] = big; }), kDump, 2, "key 'index_n_heads'"},
      {"index_dim_2p30", config([&](json& j) { j["index_head_dim"] = big; }), kDump, 2, "key 'index_head_dim'"},
      {"experts_2p30", config([&](json& j) { j["n_routed_experts"] = big; }), kDump, 2, "key 'n_routed_experts'"},
      {"experts_per_tok_2p30", config([&](json& j) { j["num_experts_per_tok"] = big; }), kDump, 2, "key 'num_experts_per_tok'"},
      {"experts_per_tok_too_many", config([](json& j) { j["num_experts_per_tok"] = 9; }), kDump, 2, "key 'num_experts_per_tok'"},
      {"moe_inter_2p30", config([&](json& j) { j["moe_intermediate_size"] = big; }), kDump, 2, "key 'moe_intermediate_size'"},
      {"vocab_2p30", config([&](json& j) { j["vocab_size"] = big; }), kDump, 2, "key 'vocab_size'"},
      {"max_pos_2p30", config([&](json& j) { j["max_position_embeddings"] = big; }), kDump, 2, "key 'max_position_embeddings'"},
      {"first_dense_2p40", config([](json& j) { j.erase("mlp_layer_types"); j["first_k_dense_replace"] = int64_t{1} << 40; }), kDump,
       2, "key 'first_k_dense_replace'"},
      {"first_dense_negative", config([](json& j) { j.erase("mlp_layer_types"); j["first_k_dense_replace"] = -1; }), kDump, 2,
       "key 'first_k_dense_replace'"},
      {"mtp_layers_huge", config([](json& j) { j["num_nextn_predict_layers"] = 1000; }), kDump, 2, "key 'num_nextn_predict_layers'"},
      {"eos_past_int64", config([](json& j) { j["eos_token_id"] = uint64_t{1} << 63; }), kDump, 2, "key 'eos_token_id'"},
      {"eos_negative", config([](json& j) { j["eos_token_id"] = json::array({1, -3}); }), kDump, 2, "key 'eos_token_id'"},
      {"block_size_wraps", config([](json& j) {
         j["quantization_config"] = {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"weight_block_size", {(uint64_t{1} << 32) + 128, 128}}};
       }), kDump, 2, "weight_block_size"},
      // ---- inconsistent dims
      {"qk_head_dim_inconsistent", config([](json& j) { j["qk_head_dim"] = 25; }), kDump, 2, "key 'qk_head_dim': 25 is not"},
      {"rope_dim_odd", config([](json& j) { j["qk_rope_head_dim"] = 7; }), kDump, 2, "even"},
      {"index_dim_below_rope", config([](json& j) { j["index_head_dim"] = 4; }), kDump, 2, "key 'index_head_dim'"},
      {"kv_heads_differ", config([](json& j) { j["num_key_value_heads"] = 2; }), kDump, 2, "key 'num_key_value_heads'"},
      {"hidden_disagrees_with_weights", config([](json& j) { j["hidden_size"] = 128; }), kDump, 2, "disagrees with config.json"},
      // ---- strings that would split the message
      {"model_type_newline", config([](json& j) { j["model_type"] = "llama\nerror: fake"; }), kDump, 2, "'llama\\x0aerror: fake'"},
      {"model_type_escape", config([](json& j) { j["model_type"] = "\x1b[31mred"; }), kDump, 2, "\\x1b[31mred"},
      {"mlp_layer_type_newline", config([](json& j) { j["mlp_layer_types"][1] = "moe\n"; }), kDump, 2, "unknown entry \"moe\\n\""},
      {"quant_method_newline", config([](json& j) { j["quantization_config"] = {{"quant_method", "a\nb"}}; }), kDump, 2,
       "quant_method"},
      {"hidden_act_huge", config([](json& j) { j["hidden_act"] = std::string(100000, 'g'); }), kDump, 2, "hidden_act"},
      {"rope_type_newline", config([](json& j) { j["rope_parameters"]["rope_type"] = "longrope\n"; }), kDump, 2,
       "\"longrope\\n\" is not supported"},
      // ---- IndexCache keys in config.json
      {"freq_2p32_plus_2", config([](json& j) { j.erase("index_topk_pattern"); j["index_topk_freq"] = (int64_t{1} << 32) + 2; }), kDump,
       2, "key 'index_topk_freq'"},
      {"offset_int_min", config([](json& j) {
         j.erase("index_topk_pattern");
         j["index_topk_freq"] = 2;
         j["index_skip_topk_offset"] = std::numeric_limits<int32_t>::min();
       }), kDump, 2, "key 'index_skip_topk_offset'"},
      {"pattern_starts_s", config([](json& j) { j["index_topk_pattern"] = "SFFF"; }), kDump, 2, "layer 0"},
      {"indexer_types_short", config([](json& j) { j["indexer_types"] = {"full", "full", "full"}; }), kDump, 2, "3 layers"},
      {"indexer_types_newline", config([](json& j) { j["indexer_types"] = {"full", "sha\nred", "full", "full"}; }), kDump, 2,
       "'sha\\x0ared'"},
      // ---- RoPE / YaRN
      {"yarn_factor_tiny", yarn({{"factor", 1e-300}}), kDump, 2, "rope_parameters.factor"},
      {"yarn_factor_below_one", yarn({{"factor", 0.5}}), kDump, 2, "rope_parameters.factor"},
      {"yarn_factor_huge", yarn({{"factor", 1e300}}), kDump, 2, "rope_parameters.factor"},
      {"yarn_factor_missing", yarn({{"factor", nullptr}}), kDump, 2, "factor': missing"},
      {"yarn_beta_fast_negative", yarn({{"beta_fast", -32}}), kDump, 2, "rope_parameters.beta_fast"},
      {"yarn_beta_slow_negative", yarn({{"beta_slow", -1}}), kDump, 2, "rope_parameters.beta_slow"},
      {"yarn_beta_order", yarn({{"beta_fast", 1}, {"beta_slow", 32}}), kDump, 2, "greater than beta_slow"},
      {"yarn_mscale_all_dim_huge", yarn({{"mscale_all_dim", 1e300}}), kDump, 2, "rope_parameters.mscale_all_dim"},
      {"yarn_mscale_negative", yarn({{"mscale", -5}}), kDump, 2, "rope_parameters.mscale"},
      {"yarn_attention_factor_zero", yarn({{"attention_factor", 0}}), kDump, 2, "attention_factor"},
      {"yarn_original_max_negative", yarn({{"original_max_position_embeddings", -4}}), kDump, 2, "original_max_position_embeddings"},
      {"yarn_legacy_rope_scaling", config([](json& j) { j["rope_scaling"] = {{"type", "yarn"}, {"factor", -1}}; }), kDump, 2,
       "rope_scaling.factor"},
      {"rope_theta_below_one", config([](json& j) { j.erase("rope_parameters"); j["rope_theta"] = 0.5; }), kDump, 2, "rope_theta"},
      {"rope_theta_huge", config([](json& j) { j["rope_parameters"]["rope_theta"] = 1e300; }), kDump, 2, "rope_theta"},
      {"rope_parameters_string", config([](json& j) { j["rope_parameters"] = "yarn"; }), kDump, 2, "key 'rope_parameters'"},
      {"rms_norm_eps_huge", config([](json& j) { j["rms_norm_eps"] = 1e10; }), kDump, 2, "rms_norm_eps"},
      {"yarn_valid_runs", yarn(json::object()), kDump, 0, "wrote"},
      // ---- non-finite logits: never a result
      {"nan_weights_dump", [](const std::string& d) { poison_tensor(d, "model.norm.weight"); }, kDump, 1,
       "logits: NaN at token position 0"},
      {"nan_embedding_row_dump", [](const std::string& d) { poison_tensor(d, "model.embed_tokens.weight", golden_ids()[7]); },
       kDump, 1, "logits: NaN at token position "},
      {"nan_weights_generate", [](const std::string& d) { poison_tensor(d, "lm_head.weight"); }, kGen, 1, "token position 43"},
      {"nan_weights_eval", [](const std::string& d) {
         poison_tensor(d, "model.norm.weight");
         fs::copy_file(d + "/ids.txt", d + "/ids.ids");
       }, kEval, 1, "logits: NaN"},
      {"overflow_scaling_dump", config([](json& j) { j["routed_scaling_factor"] = 1e300; }), kDump, 1, "logits:"},
      // ---- --plan text
      {"plan_short", nullptr, kDump + " --plan FFF", 2, "3 layers"},
      {"plan_long", nullptr, kDump + " --plan FFFFF", 2, "5 layers"},
      {"plan_bad_letter", nullptr, kDump + " --plan FFxF", 2, "'x' at position 2"},
      {"plan_first_s", nullptr, kDump + " --plan SFFF", 2, "layer 0 must be F"},
      {"plan_one_over_zero", nullptr, kDump + " --plan 1/0", 2, "N must be in [1, 1024]"},
      {"plan_one_over_negative", nullptr, kDump + " --plan 1/-1", 2, "expected 1/N"},
      {"plan_one_over_huge", nullptr, kDump + " --plan 1/2000", 2, "N must be in [1, 1024]"},
      {"plan_one_over_more_than_layers", nullptr, kDump + " --plan 1/99", 0, "plan FSSS"},
      {"plan_empty", nullptr, kDump + " --plan ''", 2, "--plan: needs a value"},
      {"plan_newline", nullptr, kDump + " --plan " + sh_quote("FF\nerror: FF"), 2, "--plan 'FF\\x0aerror: FF'"},
      {"plan_escape", nullptr, kDump + " --plan " + sh_quote("F\x1b[2JFFF"), 2, "\\x1b[2J"},
      {"plan_letter_control", nullptr, kDump + " --plan " + sh_quote(std::string("FF\x7f" "F")), 2, "expected full"},
      {"plan_100k_letters", nullptr, kDump + " --plan " + std::string(100000, 'F'), 2, "(100000 bytes)"},
      // ---- JSON plan files
      {"planfile_freq_wraps", plan_file("p.json", "{\"index_topk_freq\": 4294967298}"), kDump + " --plan {d}/p.json", 2,
       "key 'index_topk_freq': expected an integer in [0, 2147483647]"},
      {"planfile_offset_int_min", plan_file("p.json", "{\"index_topk_freq\": 1, \"index_skip_topk_offset\": -2147483648}"),
       kDump + " --plan {d}/p.json", 2, "index_skip_topk_offset"},
      {"planfile_types_string", plan_file("p.json", "{\"indexer_types\": \"full\"}"), kDump + " --plan {d}/p.json", 2,
       "key 'indexer_types': expected a list"},
      {"planfile_types_number", plan_file("p.json", "{\"indexer_types\": [\"full\", 3, \"full\", \"full\"]}"),
       kDump + " --plan {d}/p.json", 2, "expected strings, got 3"},
      {"planfile_plan_number", plan_file("p.json", "{\"plan\": 5}"), kDump + " --plan {d}/p.json", 2, "key 'plan': expected a string"},
      {"planfile_pattern_bad_letter", plan_file("p.json", "{\"index_topk_pattern\": \"FFSX\"}"), kDump + " --plan {d}/p.json", 2,
       "'X' at position 3"},
      {"planfile_deep", plan_file("p.json", "{\"plan\": " + nested(100000) + "}"), kDump + " --plan {d}/p.json", 2, "nests deeper"},
      {"planfile_array", plan_file("p.json", "[\"F\"]"), kDump + " --plan {d}/p.json", 2, "expected a JSON object"},
      {"planfile_no_plan", plan_file("p.json", "{}"), kDump + " --plan {d}/p.json", 2, "no plan found"},
      {"planfile_newline_name", plan_file("p\nx.json", "{\"plan\": \"SFFF\"}"), kDump + " --plan " + sh_quote("{d}/p\nx.json"), 2,
       "p\\x0ax.json"},
      // ---- integer flags
      {"seed_negative", nullptr, kGen + " --seed -1", 2, "--seed: '-1' is outside [0, 18446744073709551615]"},
      {"seed_2p64", nullptr, kGen + " --seed 18446744073709551616", 2, "--seed: '18446744073709551616' is outside"},
      {"seed_max_ok", nullptr, kGen + " --seed 18446744073709551615", 0, ""},
      {"n_negative", nullptr, kGen + " -n -1", 2, "-n: '-1' is outside"},
      {"n_huge", nullptr, kGen + " -n 99999999999", 2, "-n: '99999999999' is outside"},
      {"chunk_negative", nullptr, kGen + " --chunk -2", 2, "--chunk"},
      {"chunk_huge", nullptr, kGen + " --chunk 1099511627776", 2, "--chunk"},
      {"top_k_negative", nullptr, kGen + " --top-k -1", 2, "--top-k"},
      {"threads_negative", nullptr, kDump + " --threads -1", 2, "--threads: '-1' is outside [1, 4096]"},
      {"threads_zero", nullptr, kDump + " --threads 0", 2, "--threads: '0' is outside"},
      {"threads_huge", nullptr, kDump + " --threads 99999999999999999999", 2, "--threads"},
      {"gpu_negative", nullptr, "info -m {d} --gpu -1", 2, "--gpu: '-1' is outside"},
      {"ctx_zero", nullptr, "eval -m {d} --ctx 0", 2, "--ctx: '0' is outside [2, 16777216]"},
      {"ctx_negative", nullptr, "eval -m {d} --ctx -5", 2, "--ctx"},
      {"ctx_float", nullptr, "eval -m {d} --ctx 1e3", 2, "--ctx: expected an integer"},
      {"ctx_2p31", nullptr, "eval -m {d} --ctx 2147483648", 2, "--ctx"},
      {"max_windows_negative", nullptr, "eval -m {d} --max-windows -1", 2, "--max-windows"},
      {"max_items_negative", nullptr, "eval -m {d} --max-items -1", 2, "--max-items"},
      {"bench_layers_zero", nullptr, "bench --synthetic tiny --layers 0", 2, "--layers: '0' is outside"},
      {"bench_layers_huge", nullptr, "bench --synthetic tiny --layers 99999999999", 2, "--layers"},
      {"bench_decode_steps_zero", nullptr, "bench --synthetic tiny --decode-steps 0", 2, "--decode-steps"},
      {"bench_windows_negative", nullptr, "bench --synthetic tiny --mode calibrate --windows -1", 2, "--windows"},
      {"bench_repeat_huge", nullptr, "bench --synthetic tiny --repeat 4294967297", 2, "--repeat"},
      {"bench_seed_negative", nullptr, "bench --synthetic tiny --seed -1", 2, "--seed"},
      {"bench_experts_zero", nullptr, "bench --synthetic tiny --experts 0", 2, "--experts"},
      {"device_unknown", nullptr, kDump + " --device tpu", 2, "--device 'tpu': unknown device"},
      {"device_newline", nullptr, kDump + " --device " + sh_quote("cu\nda"), 2, "--device 'cu\\x0ada'"},
      {"precision_escape", nullptr, kDump + " --precision " + sh_quote("b\x1b" "f16"), 2, "--precision 'b\\x1bf16'"},
      {"ids_token_newline", [](const std::string& d) { test::write_file(d + "/bad.ids", "1 2 x\x1b[2J 3"); },
       "dump -m {d} --ids {d}/bad.ids --out {d}/o.safetensors", 2, "is not a token id"},
      // ---- a shard name with a newline (weight_map of an index file)
      {"shard_name_newline", [](const std::string& d) {
         json idx = {{"metadata", json::object()}, {"weight_map", {{"model.embed_tokens.weight", "evil\nerror: shard.safetensors"}}}};
         test::write_file(d + "/model.safetensors.index.json", idx.dump());
         fs::remove(d + "/model.safetensors");
       }, kDump, 2, "evil\\x0aerror: shard"},
      // ---- generation_config.json is read through the same bounded reader
      {"generation_config_deep", [](const std::string& d) { test::write_file(d + "/generation_config.json", "{\"a\": " + nested(100000) + "}"); },
       kGen, 2, "generation_config.json: JSON nests deeper"},
  };
  return c;
}

void PrintTo(const CliCase& c, std::ostream* os) { *os << c.name; }

class HostileCli : public ::testing::TestWithParam<CliCase> {};

TEST_P(HostileCli, OneLineErrorOrCleanRun) {
  const CliCase& c = GetParam();
  const std::string dir = copy_model(c.name.substr(0, 20));
  if (c.setup) c.setup(dir);
  const test::SplitResult r = run(expand(c.args, dir), dir);
  EXPECT_EQ(r.exit_code, c.exit_code) << "stderr: " << r.err << "\nstdout: " << r.out.substr(0, 400);
  if (c.exit_code == 0) {
    EXPECT_NE(r.out.find(c.needle), std::string::npos) << r.out;
    return;
  }
  EXPECT_NE(r.exit_code, 0) << "must not succeed: " << r.out.substr(0, 400);
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(c.needle), std::string::npos) << "missing '" << c.needle << "' in " << r.err;
  EXPECT_LT(r.err.size(), 600u) << "error lines stay short: " << r.err.substr(0, 600);
  // No result file when it failed (dump writes only after a finite forward pass).
  EXPECT_FALSE(fs::exists(dir + "/out.safetensors"));
}

INSTANTIATE_TEST_SUITE_P(Cases, HostileCli, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<CliCase>& i) { return i.param.name; });

// ---- direct library calls ------------------------------------------------------------------

ModelSpec golden_spec() { return load_model_spec(kSource); }

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(HostileLibrary, RealModelShapesPass) {
  // DeepSeek-V3.2 and GLM-5 as they ship (keys that matter for the limits).
  const json dsv = {{"model_type", "deepseek_v32"}, {"vocab_size", 129280}, {"hidden_size", 7168}, {"num_hidden_layers", 61},
                    {"num_attention_heads", 128}, {"q_lora_rank", 1536}, {"kv_lora_rank", 512}, {"qk_nope_head_dim", 128},
                    {"qk_rope_head_dim", 64}, {"v_head_dim", 128}, {"intermediate_size", 18432},
                    {"moe_intermediate_size", 2048}, {"n_routed_experts", 256}, {"num_experts_per_tok", 8}, {"n_group", 8},
                    {"topk_group", 4}, {"max_position_embeddings", 163840}, {"index_n_heads", 64}, {"index_head_dim", 128},
                    {"index_topk", 2048}, {"first_k_dense_replace", 3}, {"num_nextn_predict_layers", 1},
                    {"eos_token_id", 1}, {"rope_theta", 10000},
                    {"rope_scaling", {{"type", "yarn"}, {"factor", 40}, {"original_max_position_embeddings", 4096},
                                      {"beta_fast", 32}, {"beta_slow", 1}, {"mscale", 1.0}, {"mscale_all_dim", 1.0}}}};
  const ModelSpec d = parse_model_spec(dsv.dump(), "dsv32.json");
  EXPECT_EQ(d.num_layers, 61);
  EXPECT_NEAR(d.attention_scale(), 0.13523, 1e-4);
  json glm = {{"model_type", "glm_moe_dsa"}, {"vocab_size", 154880}, {"hidden_size", 6144}, {"num_hidden_layers", 78},
              {"num_attention_heads", 64}, {"q_lora_rank", 2048}, {"kv_lora_rank", 512}, {"qk_nope_head_dim", 192},
              {"qk_rope_head_dim", 64}, {"v_head_dim", 256}, {"qk_head_dim", 256}, {"head_dim", 192},
              {"max_position_embeddings", 202752}, {"index_topk", 2048}, {"rope_theta", 1e6},
              {"eos_token_id", {154820, 154827, 154829}}};
  EXPECT_EQ(parse_model_spec(glm.dump(), "glm5.json").num_layers, 78);
}

TEST(HostileLibrary, ConfigNestingRefusedBeforeParsing) {
  const std::string text = "{\"a\": " + nested(1 << 20) + "}";
  EXPECT_NE(error_of([&] { parse_model_spec(text, "deep.json"); }).find("deep.json: JSON nests deeper than 64"),
            std::string::npos);
}

TEST(HostileLibrary, FreqOffsetExtremesAreDefined) {
  // i - INT_MIN + 1 does not fit an int: computed in 64 bits (UBSan-clean), the rule still holds.
  EXPECT_EQ(IndexPlan::from_freq(1, std::numeric_limits<int>::min(), 4).pattern(), "FFFF");
  EXPECT_NE(error_of([] { IndexPlan::from_freq(2, std::numeric_limits<int>::min(), 4); }).find("layer 0"), std::string::npos);
  EXPECT_EQ(IndexPlan::from_freq(std::numeric_limits<int>::max(), std::numeric_limits<int>::max(), 4).pattern(), "FFFF");
}

TEST(HostileLibrary, PlanTextInMessagesIsQuotedAndBounded) {
  const ModelSpec s = golden_spec();
  const std::string e = error_of([&] { IndexPlan::parse(std::string(5000, 'F') + "\n", s); });
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  EXPECT_LT(e.size(), 300u) << e;
  EXPECT_NE(error_of([&] { IndexPlan::parse("1/1025", s); }).find("[1, 1024]"), std::string::npos);
}

// index_topk past the context: the selection buffers are as wide as the keys, not index_topk.
TEST(HostileLibrary, SelectionWidthClampedByContext) {
  const std::string dir = copy_model("topk-clamp");
  edit_config(dir, [](json& j) { j["index_topk"] = spec_limits::kMaxIndexTopk; });
  auto model = Model::load(dir, {});
  auto be = make_backend(Device{});
  model->place(*be, nullptr);
  Session session(*model, model->config_plan(), *be);
  const std::vector<int> ids = golden_ids();
  const std::vector<int32_t> ids32(ids.begin(), ids.end());
  LayerCapture cap({.selections = true});
  ForwardOptions fo;
  fo.observer = &cap;
  const ChunkResult r = session.forward(std::span(ids32).first(10), fo);
  EXPECT_EQ(r.k, 10);
  ASSERT_EQ(cap.selections.size(), 4u);
  EXPECT_EQ(cap.selections[0].size(), 10u * 10u);
  const ChunkResult d = session.forward(std::span(ids32).subspan(10, 1), fo);  // a decode step
  EXPECT_EQ(d.k, 11);
}

}  // namespace
}  // namespace indexcache
