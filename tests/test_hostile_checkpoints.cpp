// Hostile model directories through the real CLI: broken safetensors headers, sharded indexes that
// point outside the directory or disagree with their shards, tokenizer.json files built to exhaust
// the parser, names with control bytes, and FIFOs / directories / devices where a file should be.
// Each case builds its files in a fresh temp dir, runs one command (under `timeout`, so a hang is a
// failure rather than a stuck test) and checks the error contract: the exit code, stderr exactly one
// line starting with "error: ", and a substring of that line. Cases with exit code 0 check stdout
// instead (and an empty stderr). Direct library calls follow the table where they say more.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "indexcache/error.h"
#include "indexcache/safetensors.h"
#include "indexcache/tokenizer.h"
#include "indexcache/weight_store.h"
#include "io/checkpoint_schema.h"
#include "test_util.h"

namespace indexcache {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kModel = test::test_data_dir() + "/golden/dsv_b";  // 4 layers, one f16 file

// ---- Building blocks for the files of a case -----------------------------------------------

// The 8-byte little-endian length prefix alone (for headers whose length lies).
std::string le64(uint64_t n) { return std::string(reinterpret_cast<const char*>(&n), 8); }
std::string image(const std::string& header, const std::string& data = "") { return test::safetensors_image(header, data); }

std::string entry(const std::string& dtype, const std::string& shape, uint64_t begin, uint64_t end) {
  return R"({"dtype":")" + dtype + R"(","shape":)" + shape + R"(,"data_offsets":[)" + std::to_string(begin) + "," +
         std::to_string(end) + "]}";
}

// `dir`/model.safetensors holding one tensor `name` described by `entry_json`, with `data` bytes.
void single_entry(const std::string& dir, const std::string& name, const std::string& entry_json,
                  size_t data_bytes) {
  test::write_file(dir + "/model.safetensors", image("{" + json(name).dump() + ":" + entry_json + "}",
                                                     std::string(data_bytes, '\0')));
}

// The golden model's header (text) and data block.
struct GoldenFile {
  std::string header, data;
};
GoldenFile golden_file() {
  const std::string bytes = test::read_file(kModel + "/model.safetensors");
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  return {bytes.substr(8, n), bytes.substr(8 + n)};
}

// `dir`/model.safetensors: the golden model with its header text rewritten by `edit`.
void golden_with_header_text(const std::string& dir, const std::function<std::string(std::string)>& edit) {
  const GoldenFile g = golden_file();
  test::write_file(dir + "/model.safetensors", image(edit(g.header), g.data));
}

// `dir`/model.safetensors: the golden model with its header JSON edited by `edit`.
void golden_with_header(const std::string& dir, const std::function<void(json&)>& edit) {
  golden_with_header_text(dir, [&](const std::string& text) {
    json h = json::parse(text);
    edit(h);
    std::string out = h.dump();
    while (out.size() % 8) out += ' ';
    return out;
  });
}

// A shard `file` of two-element F32 tensors `names`.
void shard(const std::string& dir, const std::string& file, const std::vector<std::string>& names) {
  static const float values[2] = {1.0f, 2.0f};
  std::vector<TensorToWrite> ts;
  for (const auto& n : names) ts.push_back({n, DType::kF32, {2}, std::as_bytes(std::span(values))});
  write_safetensors(dir + "/" + file, ts);
}

void index_text(const std::string& dir, const std::string& text) {
  test::write_file(dir + "/model.safetensors.index.json", text);
}
void index_map(const std::string& dir, const json& weight_map) {
  index_text(dir, json{{"metadata", {{"total_size", 16}}}, {"weight_map", weight_map}}.dump());
}

void make_fifo(const std::string& path) {
  if (::mkfifo(path.c_str(), 0600) != 0) throw std::runtime_error("mkfifo " + path + ": " + std::strerror(errno));
}

// A small valid BPE tokenizer.json ("hello" -> he l l o).
json tokenizer_json() {
  return json::parse(R"({
    "version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
    "post_processor": null, "decoder": null,
    "model": {"type": "BPE", "vocab": {"h": 0, "e": 1, "l": 2, "o": 3, "he": 4}, "merges": ["h e"]}
  })");
}
void tokenizer(const std::string& dir, const std::function<void(json&)>& edit) {
  json t = tokenizer_json();
  edit(t);
  test::write_file(dir + "/tokenizer.json", t.dump());
}
void tokenizer_text(const std::string& dir, const std::string& text) { test::write_file(dir + "/tokenizer.json", text); }

// `depth` Sequences of `list_key`, one inside the other, around `leaf`.
json nested_sequence(const char* list_key, int depth, const json& leaf) {
  json j = leaf;
  for (int i = 0; i < depth; ++i) j = json{{"type", "Sequence"}, {list_key, json::array({j})}};
  return j;
}

// ---- The table ---------------------------------------------------------------------------------

struct HostileCase {
  std::string name;
  // Writes the case's files into `dir`, which holds the golden config.json already.
  std::function<void(const std::string& dir)> build;
  std::string args;  // CLI arguments; "{dir}" stands for the case's directory
  int exit_code;
  std::string message;  // in the one error line (exit code 0: in stdout)
};

void PrintTo(const HostileCase& c, std::ostream* os) { *os << c.name; }

const char* kInfo = "info -m {dir}";
const char* kGenerate = "generate -m {dir} -p hello -n 1";

std::vector<HostileCase> cases() {
  std::vector<HostileCase> c;
  auto add = [&](HostileCase hc) { c.push_back(std::move(hc)); };

  // -- safetensors headers (model.safetensors) --
  add({"st_empty_file", [](auto& d) { test::write_file(d + "/model.safetensors", ""); }, kInfo, 2,
       "model.safetensors: truncated: 0 bytes"});
  add({"st_truncated", [](auto& d) { test::write_file(d + "/model.safetensors", "\x10\0\0\0\0"); }, kInfo, 2,
       "shorter than the 8-byte header length"});
  add({"st_header_length_past_end", [](auto& d) { test::write_file(d + "/model.safetensors", le64(100) + "{}"); },
       kInfo, 2, "header length 100 runs past the end of the file"});
  add({"st_header_length_absurd", [](auto& d) { test::write_file(d + "/model.safetensors", le64(1ull << 40) + "{}"); },
       kInfo, 2, "exceeds the limit"});
  add({"st_header_invalid_json", [](auto& d) { test::write_file(d + "/model.safetensors", image("{\"x\": ")); },
       kInfo, 2, "model.safetensors: invalid JSON"});
  add({"st_header_not_object", [](auto& d) { test::write_file(d + "/model.safetensors", image("[]")); }, kInfo, 2,
       "header is not a JSON object"});
  add({"st_header_deep_nesting",
       [](auto& d) {
         test::write_file(d + "/model.safetensors",
                          image(std::string(200000, '[') + std::string(200000, ']')));
       },
       kInfo, 2, "nests deeper than"});
  add({"st_header_nul_then_garbage",
       [](auto& d) { golden_with_header_text(d, [](std::string h) { return h + std::string("\0garbage!", 9); }); },
       kInfo, 2, "NUL byte"});
  add({"st_header_nul_padding",
       [](auto& d) { golden_with_header_text(d, [](std::string h) { return h + std::string(8, '\0'); }); }, kInfo,
       2, "NUL byte"});
  add({"st_header_space_padding_accepted",
       [](auto& d) { golden_with_header_text(d, [](std::string h) { return h + std::string(16, ' '); }); }, kInfo,
       0, "149 tensors in 1 file(s)"});
  add({"st_duplicate_tensor_name",
       [](auto& d) {
         golden_with_header_text(d, [](std::string h) {
           // A second "model.norm.weight" that points at the first tensor's bytes: later wins in nlohmann.
           const json j = json::parse(h);
           return "{\"model.norm.weight\":" + j["model.embed_tokens.weight"].dump() + "," + h.substr(1);
         });
       },
       kInfo, 2, "tensor 'model.norm.weight': listed twice"});
  add({"st_duplicate_field_in_entry",
       [](auto& d) {
         test::write_file(d + "/model.safetensors",
                          image(R"({"x":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}})",
                                std::string(4, '\0')));
       },
       kInfo, 2, "'dtype': listed twice"});
  add({"st_offsets_past_data",
       [](auto& d) {
         golden_with_header(d, [](json& h) {
           auto& t = h["model.norm.weight"];
           const uint64_t len = t["data_offsets"][1].get<uint64_t>() - t["data_offsets"][0].get<uint64_t>();
           t["data_offsets"] = {uint64_t{1} << 40, (uint64_t{1} << 40) + len};
         });
       },
       kInfo, 2, "tensor 'model.norm.weight': data_offsets end"});
  add({"st_offsets_begin_after_end", [](auto& d) { single_entry(d, "x", entry("F32", "[1]", 8, 4), 8); }, kInfo, 2,
       "data_offsets begin 8 is after end 4"});
  add({"st_offsets_overlap",
       [](auto& d) {
         golden_with_header(d, [](json& h) {
           h["model.layers.0.post_attention_layernorm.weight"]["data_offsets"] =
               h["model.layers.0.input_layernorm.weight"]["data_offsets"];
         });
       },
       kInfo, 2, "overlap in the data block"});
  add({"st_offsets_negative", [](auto& d) { single_entry(d, "x", R"({"dtype":"F32","shape":[1],"data_offsets":[-4,0]})", 4); },
       kInfo, 2, "tensor 'x'"});
  add({"st_unknown_dtype", [](auto& d) { single_entry(d, "x", entry("F128", "[1]", 0, 16), 16); }, kInfo, 2,
       "unknown dtype 'F128'"});
  add({"st_shape_size_mismatch", [](auto& d) { single_entry(d, "x", entry("F32", "[3]", 0, 8), 8); }, kInfo, 2,
       "need 12 bytes but data_offsets span 8"});
  add({"st_negative_dimension", [](auto& d) { single_entry(d, "x", entry("F32", "[-1]", 0, 0), 0); }, kInfo, 2,
       "negative dimension"});
  add({"st_shape_overflow", [](auto& d) { single_entry(d, "x", entry("F32", "[4294967296,4294967296]", 0, 4), 4); },
       kInfo, 2, "overflows"});
  add({"st_missing_dtype", [](auto& d) { single_entry(d, "x", R"({"shape":[1],"data_offsets":[0,4]})", 4); }, kInfo,
       2, "missing 'dtype'"});
  add({"st_metadata_not_strings",
       [](auto& d) { test::write_file(d + "/model.safetensors", image(R"({"__metadata__":{"a":1}})")); }, kInfo, 2,
       "__metadata__ value of 'a'"});
  add({"st_tensor_name_newline", [](auto& d) { single_entry(d, "bad\nname", entry("F32", "[-1]", 0, 0), 0); }, kInfo,
       2, "tensor 'bad\\x0aname'"});
  add({"st_tensor_name_escape_bytes",
       [](auto& d) { single_entry(d, "\x1b[31mred\r", entry("X9", "[1]", 0, 4), 4); }, kInfo, 2,
       "tensor '\\x1b[31mred\\x0d'"});
  add({"st_is_directory", [](auto& d) { fs::create_directory(d + "/model.safetensors"); }, kInfo, 2,
       "model.safetensors: not a regular file"});
  add({"st_is_fifo", [](auto& d) { make_fifo(d + "/model.safetensors"); }, kInfo, 2,
       "model.safetensors: not a regular file"});
  add({"st_is_char_device", [](auto& d) { fs::create_symlink("/dev/zero", d + "/model.safetensors"); }, kInfo, 2,
       "model.safetensors: not a regular file"});
  add({"st_none_in_directory", [](auto&) {}, kInfo, 2, "no .safetensors files found"});
  add({"st_glob_skips_fifo", [](auto& d) { make_fifo(d + "/a.safetensors"); }, kInfo, 2,
       "no .safetensors files found"});

  // -- tensors the schema does not know (`info` notes them; the loader never reads them) --
  auto extra_tensor = [](const std::string& name) {
    return [name](const std::string& d) {
      golden_with_header(d, [&](json& h) { h[name] = json::parse(entry("F32", "[0]", 0, 0)); });
    };
  };
  add({"info_unknown_indexer_tensor", extra_tensor("model.layers.x.self_attn.indexer.foo"), kInfo, 0,
       "1 tensor(s) outside the schema, not loaded: 'model.layers.x.self_attn.indexer.foo'"});
  add({"info_huge_layer_index", extra_tensor("model.layers.99999999999.self_attn.indexer.wk.weight"), kInfo, 0,
       "outside the schema, not loaded: 'model.layers.99999999999.self_attn.indexer.wk.weight'"});
  add({"info_unknown_tensor_in_known_layer", extra_tensor("model.layers.1.self_attn.indexer.foo"), kInfo, 0,
       "indexers     present in 4 layers"});
  add({"info_unknown_tensor_name_newline", extra_tensor("model.layers.1\n.self_attn.indexer.wk.weight"), kInfo, 0,
       "not loaded: 'model.layers.1\\x0a.self_attn.indexer.wk.weight'"});

  // -- sharded checkpoints (model.safetensors.index.json) --
  add({"idx_missing_shard",
       [](auto& d) {
         shard(d, "s1.safetensors", {"a"});
         index_map(d, {{"a", "s1.safetensors"}, {"b", "gone.safetensors"}});
       },
       kInfo, 2, "gone.safetensors: cannot open: No such file or directory"});
  add({"idx_dotdot_shard", [](auto& d) { index_map(d, {{"a", "../outside.safetensors"}}); }, kInfo, 2,
       "weight_map entry for 'a' is not a plain file name"});
  add({"idx_dotdot_only", [](auto& d) { index_map(d, {{"a", ".."}}); }, kInfo, 2, "is not a plain file name"});
  add({"idx_absolute_shard", [](auto& d) { index_map(d, {{"a", "/etc/passwd"}}); }, kInfo, 2,
       "is not a plain file name"});
  add({"idx_tensor_in_two_shards",
       [](auto& d) {
         shard(d, "s1.safetensors", {"a", "dup"});
         shard(d, "s2.safetensors", {"b", "dup"});
         index_map(d, {{"a", "s1.safetensors"}, {"b", "s2.safetensors"}, {"dup", "s1.safetensors"}});
       },
       kInfo, 2, "s2.safetensors: tensor 'dup': also present in"});
  add({"idx_tensor_listed_twice",
       [](auto& d) {
         shard(d, "s1.safetensors", {"a"});
         shard(d, "s2.safetensors", {"b"});
         index_text(d, R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors", "a": "s2.safetensors"}})");
       },
       kInfo, 2, "model.safetensors.index.json: 'a': listed twice"});
  add({"idx_not_object", [](auto& d) { index_text(d, "[]"); }, kInfo, 2,
       "model.safetensors.index.json: not a JSON object"});
  add({"idx_invalid_json", [](auto& d) { index_text(d, "{\"weight_map\": "); }, kInfo, 2,
       "model.safetensors.index.json: invalid JSON"});
  add({"idx_empty", [](auto& d) { index_text(d, ""); }, kInfo, 2, "model.safetensors.index.json: empty"});
  add({"idx_deep_nesting", [](auto& d) { index_text(d, std::string(100000, '{')); }, kInfo, 2, "nests deeper than"});
  add({"idx_nul_then_garbage",
       [](auto& d) {
         shard(d, "s1.safetensors", {"a"});
         index_text(d, std::string(R"({"weight_map": {"a": "s1.safetensors"}})") + std::string("\0junk", 5));
       },
       kInfo, 2, "NUL byte"});
  add({"idx_missing_weight_map", [](auto& d) { index_text(d, R"({"metadata": {}})"); }, kInfo, 2,
       "missing 'weight_map'"});
  add({"idx_weight_map_not_object", [](auto& d) { index_text(d, R"({"weight_map": []})"); }, kInfo, 2,
       "'weight_map' is not a JSON object"});
  add({"idx_entry_not_string", [](auto& d) { index_map(d, {{"a", 3}}); }, kInfo, 2,
       "weight_map entry for 'a' is not a string"});
  add({"idx_listed_tensor_missing_from_shard",
       [](auto& d) {
         shard(d, "s1.safetensors", {"a"});
         index_map(d, {{"a", "s1.safetensors"}, {"ghost", "s1.safetensors"}});
       },
       kInfo, 2, "s1.safetensors: tensor 'ghost': listed in model.safetensors.index.json but missing"});
  add({"idx_shard_name_newline", [](auto& d) { index_map(d, {{"a", "s1\n.safetensors"}}); }, kInfo, 2,
       "'s1\\x0a.safetensors'"});
  add({"idx_tensor_name_escape_bytes",
       [](auto& d) {
         shard(d, "s1.safetensors", {"a"});
         index_map(d, {{"a", "s1.safetensors"}, {"gh\x1bost\n", "s1.safetensors"}});
       },
       kInfo, 2, "tensor 'gh\\x1bost\\x0a'"});
  add({"idx_is_fifo", [](auto& d) { make_fifo(d + "/model.safetensors.index.json"); }, kInfo, 2,
       "model.safetensors.index.json: not a regular file"});
  add({"idx_is_directory", [](auto& d) { fs::create_directory(d + "/model.safetensors.index.json"); }, kInfo, 2,
       "model.safetensors.index.json: not a regular file"});
  add({"idx_shard_is_fifo",
       [](auto& d) {
         make_fifo(d + "/s1.safetensors");
         index_map(d, {{"a", "s1.safetensors"}});
       },
       kInfo, 2, "s1.safetensors: not a regular file"});

  // -- config.json --
  add({"config_is_fifo", [](auto& d) {
         fs::remove(d + "/config.json");
         make_fifo(d + "/config.json");
       }, kInfo, 2,
       "config.json: not a regular file"});
  add({"generation_config_is_fifo", [](auto& d) {
         make_fifo(d + "/generation_config.json");
         fs::copy_file(kModel + "/model.safetensors", d + "/model.safetensors");  // it is read after the weights
         std::ofstream(d + "/prompt.ids") << "1 2 3\n";
       }, "generate -m {dir} --ids {dir}/prompt.ids -n 1", 2,
       "generation_config.json: not a regular file"});

  // -- tokenizer.json (generate reads it before the weights; a good one fails on the weights) --
  add({"tok_valid_reaches_the_weights", [](auto& d) { tokenizer(d, [](json&) {}); }, kGenerate, 2,
       "no .safetensors files found"});
  add({"tok_deep_nesting",
       [](auto& d) { tokenizer_text(d, std::string(1000000, '[') + std::string(1000000, ']')); }, kGenerate, 2,
       "tokenizer.json: JSON nests deeper than 64 levels"});
  add({"tok_deep_nesting_inside_value",
       [](auto& d) {
         tokenizer_text(d, R"({"model": {"type": "BPE", "vocab": {}, "merges": [], "x": )" + std::string(70, '[') +
                               std::string(70, ']') + "}}");
       },
       kGenerate, 2, "nests deeper than"});
  add({"tok_nested_sequence_pre_tokenizer",
       [](auto& d) {
         tokenizer(d, [](json& t) {
           t["pre_tokenizer"] = nested_sequence("pretokenizers", 20, json{{"type", "ByteLevel"}});
         });
       },
       kGenerate, 2, "Sequence nested deeper than"});
  add({"tok_nested_sequence_normalizer",
       [](auto& d) {
         tokenizer(d, [](json& t) { t["normalizer"] = nested_sequence("normalizers", 20, json{{"type", "Sequence"}, {"normalizers", json::array()}}); });
       },
       kGenerate, 2, "Sequence nested deeper than"});
  add({"tok_nested_sequence_decoder",
       [](auto& d) {
         tokenizer(d, [](json& t) { t["decoder"] = nested_sequence("decoders", 20, json{{"type", "ByteLevel"}}); });
       },
       kGenerate, 2, "Sequence nested deeper than"});
  add({"tok_nested_sequence_post_processor",
       [](auto& d) {
         tokenizer(d, [](json& t) { t["post_processor"] = nested_sequence("processors", 20, json{{"type", "ByteLevel"}}); });
       },
       kGenerate, 2, "Sequence nested deeper than"});
  add({"tok_unknown_model_type", [](auto& d) { tokenizer(d, [](json& t) { t["model"]["type"] = "WordPiece"; }); },
       kGenerate, 2, "key 'model.type': unsupported model type 'WordPiece'"});
  add({"tok_missing_model", [](auto& d) { tokenizer(d, [](json& t) { t.erase("model"); }); }, kGenerate, 2,
       "key 'model': missing"});
  add({"tok_merge_unknown_token", [](auto& d) { tokenizer(d, [](json& t) { t["model"]["merges"] = {"h x"}; }); },
       kGenerate, 2, "key 'model.merges[0]': refers to unknown token 'x'"});
  add({"tok_merge_result_not_in_vocab",
       [](auto& d) { tokenizer(d, [](json& t) { t["model"]["merges"] = {"l o"}; }); }, kGenerate, 2,
       "merged token 'lo' is not in the vocab"});
  add({"tok_merge_two_spaces", [](auto& d) { tokenizer(d, [](json& t) { t["model"]["merges"] = {"h e l"}; }); },
       kGenerate, 2, "expected \"left right\" (one space)"});
  add({"tok_merge_not_string_or_pair", [](auto& d) { tokenizer(d, [](json& t) { t["model"]["merges"] = {42}; }); },
       kGenerate, 2, "expected \"left right\" or [left, right], got 42"});
  add({"tok_merge_huge_value_bounded",
       [](auto& d) {
         tokenizer(d, [](json& t) {
           json big = json::array();
           for (int i = 0; i < 200000; ++i) big.push_back(i);
           t["model"]["merges"] = {big};
         });
       },
       kGenerate, 2, "got [0,1,2,3,"});
  add({"tok_merges_not_array", [](auto& d) { tokenizer(d, [](json& t) { t["model"]["merges"] = "h e"; }); },
       kGenerate, 2, "key 'model.merges': expected an array"});
  add({"tok_vocab_id_negative", [](auto& d) { tokenizer(d, [](json& t) { t["model"]["vocab"]["h"] = -1; }); },
       kGenerate, 2, "token id -1 out of range"});
  add({"tok_vocab_id_huge",
       [](auto& d) { tokenizer(d, [](json& t) { t["model"]["vocab"]["h"] = uint64_t{1} << 63; }); }, kGenerate, 2,
       "token id 9223372036854775808 out of range"});
  add({"tok_vocab_duplicate_id_newline_token",
       [](auto& d) { tokenizer(d, [](json& t) { t["model"]["vocab"]["a\nb"] = 3; }); }, kGenerate, 2,
       "already belongs to"});
  add({"tok_pre_tokenizer_type_escape_bytes",
       [](auto& d) { tokenizer(d, [](json& t) { t["pre_tokenizer"] = {{"type", "Evil\n\x1b[2J"}}; }); }, kGenerate,
       2, "unsupported pre-tokenizer 'Evil\\x0a\\x1b[2J'"});
  add({"tok_root_not_object", [](auto& d) { tokenizer_text(d, "[1, 2]"); }, kGenerate, 2,
       "expected a JSON object, got an array"});
  add({"tok_empty", [](auto& d) { tokenizer_text(d, ""); }, kGenerate, 2, "tokenizer.json: empty"});
  add({"tok_invalid_json", [](auto& d) { tokenizer_text(d, "{\"model\": "); }, kGenerate, 2,
       "tokenizer.json: invalid JSON (byte"});
  add({"tok_nul_then_garbage",
       [](auto& d) { tokenizer_text(d, tokenizer_json().dump() + std::string("\0garbage", 8)); }, kGenerate, 2,
       "NUL byte"});
  add({"tok_invalid_regex",
       [](auto& d) {
         tokenizer(d, [](json& t) {
           t["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
         });
       },
       kGenerate, 2, "key 'pre_tokenizer.pattern.Regex': invalid regex"});
  add({"tok_unknown_split_behavior",
       [](auto& d) {
         tokenizer(d, [](json& t) {
           t["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Explode"}};
         });
       },
       kGenerate, 2, "unknown behavior 'Explode'"});
  add({"tok_unsupported_normalizer", [](auto& d) { tokenizer(d, [](json& t) { t["normalizer"] = {{"type", "NFC"}}; }); },
       kGenerate, 2, "unsupported normalizer 'NFC'"});
  add({"tok_unsupported_decoder", [](auto& d) { tokenizer(d, [](json& t) { t["decoder"] = {{"type", "WordPiece"}}; }); },
       kGenerate, 2, "unsupported decoder 'WordPiece'"});
  add({"tok_template_unknown_special",
       [](auto& d) {
         tokenizer(d, [](json& t) {
           t["post_processor"] = {{"type", "TemplateProcessing"},
                                  {"single", {{{"SpecialToken", {{"id", "<s>"}}}}, {{"Sequence", {{"id", "A"}}}}}},
                                  {"special_tokens", json::object()}};
         });
       },
       kGenerate, 2, "'<s>' is not in special_tokens"});
  add({"tok_byte_fallback", [](auto& d) { tokenizer(d, [](json& t) { t["model"]["byte_fallback"] = true; }); },
       kGenerate, 2, "byte_fallback is not supported"});
  add({"tok_added_tokens_not_array", [](auto& d) { tokenizer(d, [](json& t) { t["added_tokens"] = json::object(); }); },
       kGenerate, 2, "key 'added_tokens': expected an array"});
  add({"tok_is_fifo", [](auto& d) { make_fifo(d + "/tokenizer.json"); }, kGenerate, 2,
       "tokenizer.json: not a regular file"});
  add({"tok_is_directory", [](auto& d) { fs::create_directory(d + "/tokenizer.json"); }, kGenerate, 2,
       "tokenizer.json: not a regular file"});
  return c;
}

// ---- Running a case ----------------------------------------------------------------------------

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = 0; (p = s.find(from, p)) != std::string::npos; p += to.size()) s.replace(p, from.size(), to);
  return s;
}

class Hostile : public testing::TestWithParam<HostileCase> {};

TEST_P(Hostile, OneLineErrorAndExitCode) {
  const HostileCase& hc = GetParam();
  const std::string dir = test::make_temp_dir("hostile-" + hc.name);
  fs::copy_file(kModel + "/config.json", dir + "/config.json");
  hc.build(dir);
  const test::SplitResult r = test::run_cli_split(replace_all(hc.args, "{dir}", dir), fs::path(dir).parent_path().string());
  ASSERT_NE(r.exit_code, 124) << "timed out (hung)";
  EXPECT_EQ(r.exit_code, hc.exit_code) << "stderr: " << r.err;
  if (hc.exit_code == 0) {
    EXPECT_EQ(r.err, "");
    EXPECT_NE(r.out.find(hc.message), std::string::npos) << "missing \"" << hc.message << "\" in stdout:\n" << r.out;
    return;
  }
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.err.back(), '\n') << r.err;
  EXPECT_LT(r.err.size(), 600u) << "error line is not bounded: " << r.err.substr(0, 600);
  EXPECT_NE(r.err.find(hc.message), std::string::npos) << "missing \"" << hc.message << "\" in " << r.err;
}

INSTANTIATE_TEST_SUITE_P(Table, Hostile, testing::ValuesIn(cases()),
                         [](const testing::TestParamInfo<HostileCase>& info) { return info.param.name; });

// ---- Direct library calls ------------------------------------------------------------------------

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

std::span<const std::byte> bytes_of(const std::string& s) { return std::as_bytes(std::span(s.data(), s.size())); }

TEST(HostileLibrary, DuplicateTensorNameNamesTheTensor) {
  const std::string img = image("{\"w\":" + entry("F32", "[1]", 0, 4) + ",\"w\":" + entry("F32", "[1]", 4, 8) + "}",
                                std::string(8, '\0'));
  const std::string msg = error_of([&] { SafetensorsFile::parse(bytes_of(img), "mem.st"); });
  EXPECT_EQ(msg, "mem.st: tensor 'w': listed twice in the header");
}

TEST(HostileLibrary, NulInsideHeaderIsRefusedSpacePaddingIsNot) {
  const std::string body = "{\"w\":" + entry("F32", "[1]", 0, 4) + "}";
  const std::string nul = image(body + std::string("\0{\"v\":[]}", 9), std::string(4, '\0'));
  EXPECT_NE(error_of([&] { SafetensorsFile::parse(bytes_of(nul), "mem.st"); }).find("NUL byte at byte"),
            std::string::npos);
  const std::string padded = image(body + "       ", std::string(4, '\0'));
  EXPECT_EQ(SafetensorsFile::parse(bytes_of(padded), "mem.st")->tensors().size(), 1u);
}

TEST(HostileLibrary, SequenceNestingIsBoundedBeforeRecursion) {
  json t = tokenizer_json();
  t["pre_tokenizer"] = nested_sequence("pretokenizers", 8, json{{"type", "ByteLevel"}});
  EXPECT_NO_THROW(Tokenizer::from_json(t.dump(), "tok").encode("hello"));  // 8 deep is fine
  t["pre_tokenizer"] = nested_sequence("pretokenizers", 9, json{{"type", "ByteLevel"}});
  const std::string msg = error_of([&] { Tokenizer::from_json(t.dump(), "tok"); });
  EXPECT_NE(msg.find("Sequence nested deeper than 8 levels"), std::string::npos) << msg;
}

TEST(HostileLibrary, TokenizerErrorsShowBoundedValues) {
  json t = tokenizer_json();
  t["model"]["merges"] = {json{{"k", std::string(100000, 'x')}}};
  const std::string msg = error_of([&] { Tokenizer::from_json(t.dump(), "tok"); });
  EXPECT_LT(msg.size(), 200u) << msg.substr(0, 300);
  EXPECT_NE(msg.find("..."), std::string::npos) << msg;
}

TEST(HostileLibrary, LayerIndexOfHostileNames) {
  EXPECT_EQ(tensor_layer_index("model.layers.7.self_attn.indexer.wk.weight"), 7);
  EXPECT_EQ(tensor_layer_index("model.layers.0.mlp.gate.weight"), 0);
  for (const char* bad : {"model.layers.x.self_attn.indexer.foo", "model.layers.99999999999.self_attn.indexer.wk.weight",
                          "model.layers.2147483647.x", "model.layers.-1.x", "model.layers.+1.x", "model.layers.01.x",
                          "model.layers..x", "model.layers.3", "model.norm.weight", "model.layers.1 .x"})
    EXPECT_EQ(tensor_layer_index(bad), std::nullopt) << bad;
}

TEST(HostileLibrary, NonRegularFilesAreRefusedWithoutOpening) {
  const std::string dir = test::make_temp_dir("hostile-lib");
  make_fifo(dir + "/fifo.safetensors");
  // A child process, so that a regression that blocks in open() fails here instead of hanging.
  const pid_t pid = fork();
  if (pid == 0) {
    alarm(20);
    try {
      SafetensorsFile::open(dir + "/fifo.safetensors");
    } catch (const Error& e) {
      _exit(std::string(e.what()).find("not a regular file") != std::string::npos ? 0 : 3);
    }
    _exit(4);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << WTERMSIG(status) << " (blocked on the FIFO?)";
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_NE(error_of([&] { Tokenizer::load(dir); }).find(dir + ": not a regular file (a directory)"),
            std::string::npos);
}

}  // namespace
}  // namespace indexcache
