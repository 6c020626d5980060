// Hostile outputs and inputs of calibrate / overlap (issue 17): what `--out` may and may not
// overwrite, the resumable state file a user may have edited, and the data files. One table of
// cases run through the real CLI (exit code, stderr exactly one `error: ...` line, a message
// substring, files left byte-for-byte untouched), plus direct library calls.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "indexcache/dataset.h"
#include "indexcache/error.h"
#include "indexcache/evaluate.h"
#include "indexcache/report.h"
#include "indexcache/tokenizer.h"
#include "test_util.h"

namespace indexcache {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kGlm = test::test_data_dir() + "/golden/glm_a";  // 6 layers, vocab 256, no tokenizer
const std::string kMini = test::test_data_dir() + "/../../models/dsa-mini";  // has tokenizer.json
const std::string kGlmTokenizer = test::test_data_dir() + "/tokenizer/glm_style/tokenizer.json";
constexpr int kLayers = 6;
const std::string kMarker = ".indexcache-output";

std::string ids_text(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(0, 255);
  std::string s;
  for (int i = 0; i < n; ++i) s += (i ? (i % 20 ? " " : "\n") : "") + std::to_string(d(rng));
  return s + "\n";
}

// ---- running the CLI with stdout and stderr apart ------------------------------------------------

test::SplitResult run_split(const std::string& args, const std::string& scratch) {
  return test::run_cli_split(args, scratch);
}

// ---- state files -----------------------------------------------------------------------------------

// The fingerprint calibrate computes for {d}/calib.ids at --ctx 48 (default --max-windows 4).
std::string fingerprint_of(const std::string& ids_path) {
  const DataFile f = load_data_file(ids_path, nullptr, {.ctx = 48, .max_windows = 4, .max_items = 0, .vocab_size = 256});
  return windows_fingerprint(f.windows);
}

// A valid state for calib.ids: one step (layer 3 flipped).
json template_state(const std::string& ids_path) {
  json j;
  j["version"] = 1;
  j["model"] = kGlm;
  j["num_layers"] = kLayers;
  j["data_fingerprint"] = fingerprint_of(ids_path);
  j["windows"] = 3;
  j["full_loss"] = 5.5;
  j["layer_forwards"] = 60;
  j["naive_layer_forwards"] = 90;
  j["plan"] = "FFFSFF";
  j["steps"] = json::array({{{"flipped", 3},
                             {"loss", 5.6},
                             {"plan", "FFFSFF"},
                             {"seconds", 0.25},
                             {"candidates", json::array({{{"layer", 1}, {"loss", 5.9}}, {{"layer", 3}, {"loss", 5.6}}})}}});
  return j;
}

std::string deep(int levels) { return std::string(levels, '[') + std::string(levels, ']'); }

// ---- the table -------------------------------------------------------------------------------------

struct Case {
  std::string name;
  // Makes files under the case's dir `d` (which already holds calib.ids). Returns false to skip.
  std::function<bool(const std::string& d)> setup;
  std::string command;  // {d}: the case's dir, {glm}, {mini}: models, {ids}: {d}/calib.ids
  int exit_code = 2;
  std::string message;                  // substring of the error line ("" for exit 0)
  std::vector<std::string> untouched;   // paths under {d} that must keep their bytes
  std::vector<std::string> forbidden;   // must not appear in stderr
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::string expand(std::string s, const std::string& d) {
  const std::map<std::string, std::string> vars = {{"{d}", d}, {"{glm}", kGlm}, {"{mini}", kMini}, {"{ids}", d + "/calib.ids"}};
  for (const auto& [k, v] : vars)
    for (size_t p; (p = s.find(k)) != std::string::npos;) s.replace(p, k.size(), v);
  return s;
}

void put(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  test::write_file(path, text);
}

// A directory of ours (marker written by hand) with a state file made by `edit` from the template.
std::function<bool(const std::string&)> state(const std::function<std::string(json)>& edit) {
  return [edit](const std::string& d) {
    put(d + "/o/" + kMarker, "indexcache calibrate\n");
    put(d + "/o/state.json", edit(template_state(d + "/calib.ids")));
    return true;
  };
}
std::function<bool(const std::string&)> state_set(const std::function<void(json&)>& edit) {
  return state([edit](json j) {
    edit(j);
    return j.dump(1);
  });
}
std::function<bool(const std::string&)> files(std::vector<std::pair<std::string, std::string>> fs_) {
  return [fs_](const std::string& d) {
    for (const auto& [p, t] : fs_) put(d + "/" + p, t);
    return true;
  };
}

const std::string kResume = "calibrate -m {glm} --data {ids} --ctx 48 --out {d}/o --keep-layers 5 --resume";
const std::string kCal = "calibrate -m {glm} --ctx 48 --out {d}/o --keep-layers 5 --max-windows 1 --data ";
const std::string kChat = "calibrate -m {mini} --ctx 16 --out {d}/o --keep-layers 11 --max-windows 1 --data {d}/c.jsonl";
const std::string kOverlap = "overlap -m {glm} --data {ids} --ctx 48 --max-windows 1 --out ";

std::string chat_line(const json& messages) { return json({{"messages", messages}}).dump() + "\n"; }

// An existing empty directory the current user cannot create files in: mode 0555 (not for root),
// or an empty procfs directory.
std::string unwritable_dir(const std::string& d) {
  const std::string ro = d + "/ro";
  fs::create_directories(ro);
  ::chmod(ro.c_str(), 0555);
  for (const std::string& cand : {ro, std::string("/proc/driver")}) {
    std::error_code ec;
    if (!fs::is_directory(cand, ec) || !fs::is_empty(cand, ec)) continue;
    const std::string probe = cand + "/.probe-by-test";
    FILE* f = std::fopen(probe.c_str(), "w");
    if (!f) return cand;
    std::fclose(f);
    std::remove(probe.c_str());
  }
  return "";
}

std::vector<Case> cases() {
  std::vector<Case> c;
  // ---- --out ----
  c.push_back({"out_user_files_refused", files({{"o/notes.md", "my notes\n"}, {"o/report.json", "{\"mine\": 1}\n"}}),
               kCal + "{ids}", 2, "is not empty", {"o/notes.md", "o/report.json"}, {}});
  c.push_back({"out_user_files_refused_overlap", files({{"o/overlap.json", "{\"mine\": 1}\n"}}), kOverlap + "{d}/o", 2,
               "was not written by indexcache overlap", {"o/overlap.json"}, {}});
  c.push_back({"out_user_state_tmp_refused", files({{"o/state.json.tmp", "user's own file\n"}}), kCal + "{ids}", 2,
               "'state.json.tmp'", {"o/state.json.tmp"}, {}});
  c.push_back({"out_user_state_tmp_survives_force",
               files({{"o/state.json.tmp", "user's own file\n"}, {"o/notes.md", "keep\n"}}), kCal + "{ids} --force", 0, "",
               {"o/state.json.tmp", "o/notes.md"}, {}});
  c.push_back({"out_overlap_tmp_survives_force",
               files({{"o/overlap.json.tmp", "user's\n"}, {"o/overlap.csv.tmp", "user's\n"}}), kOverlap + "{d}/o --force",
               0, "", {"o/overlap.json.tmp", "o/overlap.csv.tmp"}, {}});
  // `/` is refused before anything is read (the data file does not even exist).
  c.push_back({"out_root_refused", nullptr, "overlap -m {glm} --data {d}/missing.ids --out /", 2, "root directory", {}, {}});
  c.push_back({"out_root_refused_force", nullptr, "calibrate -m {glm} --data {d}/missing.ids --out / --force", 2,
               "root directory", {}, {}});
  c.push_back({"out_root_dotdot_refused", nullptr, "overlap -m {glm} --data {d}/missing.ids --out {d}/../../../../../..",
               2, "root directory", {}, {}});
  auto model_copy = [](const std::string& d) {
    fs::create_directories(d + "/model");
    for (const char* f : {"config.json", "model.safetensors"}) fs::copy_file(kGlm + "/" + f, d + "/model/" + f);
    return true;
  };
  c.push_back({"out_model_dir_refused_force", model_copy,
               "overlap -m {d}/model --data {ids} --ctx 48 --out {d}/model --force", 2, "is the model directory",
               {"model/config.json", "model/model.safetensors"}, {}});
  c.push_back({"out_model_dir_spelled_otherwise", model_copy,
               "calibrate -m {d}/model --data {ids} --ctx 48 --out {d}/model/./ --force", 2, "is the model directory",
               {"model/config.json"}, {}});
  c.push_back({"out_is_a_file", files({{"o", "a file\n"}}), kOverlap + "{d}/o", 2, "exists and is not a directory", {"o"}, {}});
  // Unwritable: found before the data is loaded (the data file is missing), so before any work.
  c.push_back({"out_under_a_file_fails_fast", files({{"f", "a file\n"}}),
               "calibrate -m {glm} --data {d}/missing.ids --out {d}/f/sub", 2, "cannot create the output directory", {"f"},
               {"missing.ids"}});
  c.push_back({"out_unwritable_fails_fast",
               [](const std::string& d) {
                 const std::string u = unwritable_dir(d);
                 if (u.empty()) return false;
                 put(d + "/unwritable.path", u);
                 return true;
               },
               "calibrate -m {glm} --data {d}/missing.ids --out \"$(cat {d}/unwritable.path)\"", 2,
               "cannot write into the output directory", {}, {"missing.ids"}});
  c.push_back({"out_unwritable_overlap_fails_fast",
               [](const std::string& d) {
                 const std::string u = unwritable_dir(d);
                 if (u.empty()) return false;
                 put(d + "/unwritable.path", u);
                 return true;
               },
               "overlap -m {glm} --data {d}/missing.ids --out \"$(cat {d}/unwritable.path)\"", 2,
               "cannot write into the output directory", {}, {"missing.ids"}});
  c.push_back({"out_empty_name", nullptr, "calibrate -m {glm} --data {d}/missing.ids --out ''", 2, "--out", {}, {}});
  c.push_back({"out_other_commands_dir",
               files({{"o/" + kMarker, "indexcache overlap\n"}, {"o/overlap.json", "{}\n"}, {"o/report.json", "{}\n"}}),
               kCal + "{ids}", 2, "holds the output of 'indexcache overlap'", {"o/overlap.json", "o/report.json"}, {}});
  c.push_back({"out_resume_into_user_dir", files({{"o/state.json", "{}\n"}, {"o/notes.md", "mine\n"}}), kResume, 2,
               "'notes.md'", {"o/state.json", "o/notes.md"}, {}});
  c.push_back({"out_resume_without_dir", nullptr, kResume, 2, "no saved search to resume", {}, {}});
  // Allowed: a new, empty, or own directory (re-run replaces its own files).
  c.push_back({"out_empty_dir_ok", [](const std::string& d) { return fs::create_directories(d + "/o"); }, kOverlap + "{d}/o",
               0, "", {}, {}});
  c.push_back({"out_own_dir_rerun_ok", files({{"o/" + kMarker, "indexcache overlap\n"}, {"o/overlap.json", "old\n"}}),
               kOverlap + "{d}/o", 0, "", {}, {}});
  c.push_back({"out_marker_only_any_command_ok", files({{"o/" + kMarker, "indexcache overlap\n"}}), kCal + "{ids}", 0, "",
               {}, {}});

  // ---- the state file of --resume ----
  c.push_back({"state_template_resumes", state_set([](json&) {}), kResume, 0, "", {}, {}});
  c.push_back({"state_truncated", state([](json j) { const auto t = j.dump(1); return t.substr(0, t.size() / 2); }),
               kResume, 2, "invalid JSON", {}, {}});
  c.push_back({"state_empty", state([](json) { return std::string(); }), kResume, 2, "empty", {}, {}});
  c.push_back({"state_not_object", state([](json) { return std::string("[1, 2]"); }), kResume, 2,
               "expected a calibration state", {}, {}});
  c.push_back({"state_version_string", state_set([](json& j) { j["version"] = "1"; }), kResume, 2, "key 'version'", {}, {}});
  c.push_back({"state_num_layers_2p32", state_set([](json& j) { j["num_layers"] = (1ull << 32) + kLayers; }), kResume, 2,
               "key 'num_layers'", {}, {}});
  c.push_back({"state_other_models_layers", state_set([](json& j) { j["num_layers"] = 12; }), kResume, 2,
               "model with 12 layers, this one has 6", {}, {}});
  c.push_back({"state_full_loss_negative", state_set([](json& j) { j["full_loss"] = -1.0; }), kResume, 2,
               "key 'full_loss'", {}, {}});
  c.push_back({"state_full_loss_null_nan", state_set([](json& j) { j["full_loss"] = std::nan(""); }), kResume, 2,
               "key 'full_loss'", {}, {}});
  c.push_back({"state_full_loss_nan_literal", state([](json j) {
                 auto t = j.dump(1);
                 t.replace(t.find("5.5"), 3, "NaN");
                 return t;
               }),
               kResume, 2, "invalid JSON", {}, {}});
  c.push_back({"state_full_loss_huge", state([](json j) {
                 auto t = j.dump(1);
                 t.replace(t.find("5.5"), 3, "1e999");
                 return t;
               }),
               kResume, 2, "state.json", {}, {}});
  c.push_back({"state_layer_forwards_negative", state_set([](json& j) { j["layer_forwards"] = -5; }), kResume, 2,
               "key 'layer_forwards'", {}, {}});
  c.push_back({"state_naive_forwards_2p64", state([](json j) {
                 auto t = j.dump(1);
                 t.replace(t.find("90"), 2, "18446744073709551616");
                 return t;
               }),
               kResume, 2, "key 'naive_layer_forwards'", {}, {}});
  c.push_back({"state_fingerprint_type", state_set([](json& j) { j["data_fingerprint"] = 7; }), kResume, 2,
               "key 'data_fingerprint'", {}, {}});
  c.push_back({"state_steps_not_array", state_set([](json& j) { j["steps"] = "none"; }), kResume, 2, "key 'steps'", {}, {}});
  c.push_back({"state_step_not_object", state_set([](json& j) { j["steps"][0] = 3; }), kResume, 2, "key 'steps[0]'", {}, {}});
  c.push_back({"state_flipped_2p32", state_set([](json& j) { j["steps"][0]["flipped"] = (1ull << 32) + 3; }), kResume, 2,
               "key 'steps[0].flipped'", {}, {}});
  c.push_back({"state_flipped_out_of_range", state_set([](json& j) { j["steps"][0]["flipped"] = kLayers; }), kResume, 2,
               "key 'steps[0].flipped'", {}, {}});
  c.push_back({"state_flipped_layer0", state_set([](json& j) { j["steps"][0]["flipped"] = 0; }), kResume, 2,
               "key 'steps[0].flipped'", {}, {}});
  c.push_back({"state_step_loss_negative", state_set([](json& j) { j["steps"][0]["loss"] = -0.5; }), kResume, 2,
               "key 'steps[0].loss'", {}, {}});
  c.push_back({"state_step_loss_string", state_set([](json& j) { j["steps"][0]["loss"] = "5.6"; }), kResume, 2,
               "key 'steps[0].loss'", {}, {}});
  c.push_back({"state_step_seconds_negative", state_set([](json& j) { j["steps"][0]["seconds"] = -1; }), kResume, 2,
               "key 'steps[0].seconds'", {}, {}});
  c.push_back({"state_candidate_layer_out_of_range",
               state_set([](json& j) { j["steps"][0]["candidates"][0]["layer"] = 99; }), kResume, 2,
               "key 'steps[0].candidates[0].layer'", {}, {}});
  c.push_back({"state_candidate_layer_negative",
               state_set([](json& j) { j["steps"][0]["candidates"][1]["layer"] = -1; }), kResume, 2,
               "key 'steps[0].candidates[1].layer'", {}, {}});
  c.push_back({"state_candidate_loss_null", state_set([](json& j) { j["steps"][0]["candidates"][0]["loss"] = nullptr; }),
               kResume, 2, "key 'steps[0].candidates[0].loss'", {}, {}});
  c.push_back({"state_too_many_steps",
               state_set([](json& j) { j["steps"] = json::array({1, 2, 3, 4, 5, 6, 7}); }), kResume, 2,
               "at most 5 possible", {}, {}});
  c.push_back({"state_deep_nesting", state([](json j) {
                 auto t = j.dump();
                 return t.substr(0, t.size() - 1) + ", \"x\": " + deep(100000) + "}";
               }),
               kResume, 2, "nests deeper", {}, {}});

  // ---- data files ----
  c.push_back({"ids_word", files({{"a.ids", "1 2\n3 x3 4\n"}}), kCal + "{d}/a.ids", 2, "a.ids:2: token 'x3' is not a token id",
               {}, {}});
  c.push_back({"ids_negative", files({{"a.ids", "1 2 3\n\n4 -4\n"}}), kCal + "{d}/a.ids", 2, "a.ids:3: token '-4' is negative",
               {}, {}});
  c.push_back({"ids_outside_vocab", files({{"a.ids", "1 2 256 4\n"}}), kCal + "{d}/a.ids", 2,
               "a.ids:1: token id '256' is outside the model's vocabulary", {}, {}});
  c.push_back({"ids_2p32_plus_12", files({{"a.ids", "1 2\n4294967308\n"}}), kCal + "{d}/a.ids", 2,
               "a.ids:2: token id '4294967308' is outside", {}, {}});
  c.push_back({"ids_overflowing", files({{"a.ids", "1 99999999999999999999999999\n"}}), kCal + "{d}/a.ids", 2,
               "a.ids:1: token id '99999999999999999999999", {}, {}});
  c.push_back({"ids_escape_sequence", files({{"a.ids", "1 2 \x1b[31mred\x07 3\n"}}), kCal + "{d}/a.ids", 2,
               "'\\x1b[31mred\\x07'", {}, {"\x1b", "\x07"}});
  c.push_back({"ids_long_token_cut", files({{"a.ids", "1 " + std::string(5000, 'z') + "\n"}}), kCal + "{d}/a.ids", 2,
               "zzz'...", {}, {std::string(100, 'z')}});
  c.push_back({"ids_empty_file", files({{"a.ids", ""}}), kCal + "{d}/a.ids", 2, "a.ids: empty data file", {}, {}});
  c.push_back({"ids_one_token", files({{"a.ids", "5\n"}}), kCal + "{d}/a.ids", 2, "no window of at least 2 tokens", {}, {}});
  c.push_back({"data_is_a_fifo",
               [](const std::string& d) { return ::mkfifo((d + "/p.ids").c_str(), 0644) == 0; }, kCal + "{d}/p.ids", 2,
               "not a regular file", {}, {}});
  c.push_back({"jsonl_malformed_line_3", files({{"a.jsonl", "{\"ids\": [1, 2, 3]}\n\n{\"ids\": [1, 2,\n"}}),
               kCal + "{d}/a.jsonl", 2, "a.jsonl:3: invalid JSON", {}, {}});
  c.push_back({"jsonl_deep_line_2", files({{"a.jsonl", "{\"ids\": [1, 2, 3]}\n" + deep(5000) + "\n"}}), kCal + "{d}/a.jsonl",
               2, "a.jsonl:2: JSON nests deeper", {}, {}});
  c.push_back({"jsonl_not_object", files({{"a.jsonl", "[1, 2]\n"}}), kCal + "{d}/a.jsonl", 2,
               "a.jsonl:1: expected a JSON object", {}, {}});
  c.push_back({"jsonl_ids_2p32_plus_12", files({{"a.jsonl", "{\"ids\": [1, 4294967308]}\n"}}), kCal + "{d}/a.jsonl", 2,
               "a.jsonl:1: key 'ids': entry 1: expected a token id in [0, 255]", {}, {}});
  c.push_back({"jsonl_ids_float", files({{"a.jsonl", "{\"ids\": [1, 2.5]}\n"}}), kCal + "{d}/a.jsonl", 2,
               "a.jsonl:1: key 'ids'", {}, {}});
  c.push_back({"jsonl_unknown_shape", files({{"a.jsonl", "{\"foo\": 1}\n"}}), kCal + "{d}/a.jsonl", 2,
               "a.jsonl:1: expected {\"text\"", {}, {}});
  c.push_back({"jsonl_task_not_string", files({{"a.jsonl", "{\"task\": 5, \"prompt_ids\": [1], \"answer_ids\": [2]}\n"}}),
               "eval -m {glm} --data {d}/a.jsonl", 2, "a.jsonl:1: key 'task'", {}, {}});
  c.push_back({"jsonl_escape_in_value", files({{"a.jsonl", "{\"ids\": [\"\\u001b[2J\"]}\n"}}), kCal + "{d}/a.jsonl", 2,
               "found \"\\u001b[2J\"", {}, {"\x1b"}});
  // Chat JSONL (dsa-mini has a tokenizer).
  c.push_back({"chat_empty_messages", files({{"c.jsonl", chat_line(json::array())}}), kChat, 2,
               "c.jsonl:1: key 'messages': no messages", {}, {}});
  c.push_back({"chat_messages_not_array", files({{"c.jsonl", chat_line("hello")}}), kChat, 2,
               "c.jsonl:1: key 'messages': expected an array", {}, {}});
  c.push_back({"chat_message_not_object",
               files({{"c.jsonl", "{\"text\": \"fine\"}\n" + chat_line(json::array({"hi"}))}}), kChat, 2,
               "c.jsonl:2: key 'messages[0]'", {}, {}});
  c.push_back({"chat_role_not_string", files({{"c.jsonl", chat_line({{{"role", 1}, {"content", "hi"}}})}}), kChat, 2,
               "c.jsonl:1: key 'messages[0].role': expected a string", {}, {}});
  c.push_back({"chat_content_not_string",
               files({{"c.jsonl", chat_line({{{"role", "user"}, {"content", {{"text", "hi"}}}}})}}), kChat, 2,
               "c.jsonl:1: key 'messages[0].content': expected a string", {}, {}});
  c.push_back({"chat_content_missing", files({{"c.jsonl", chat_line({{{"role", "user"}}})}}), kChat, 2,
               "key 'messages[0].content'", {}, {}});
  c.push_back({"chat_unknown_role",
               files({{"c.jsonl", chat_line({{{"role", "robot\x1b"}, {"content", "hi"}}})}}), kChat, 2,
               "unknown role 'robot\\x1b'", {}, {"\x1b"}});
  c.push_back({"chat_system_prompt_and_turns_ok",
               files({{"c.jsonl", chat_line({{{"role", "system"}, {"content", "be brief"}}, {{"role", "user"}, {"content", "hi"}},
                                             {{"role", "assistant"}, {"content", "hello"}}, {{"role", "user"}, {"content", "bye"}}})}}),
               kChat, 0, "", {}, {}});
  c.push_back({"chat_system_not_first",
               files({{"c.jsonl", chat_line({{{"role", "user"}, {"content", "hi"}}, {{"role", "system"}, {"content", "late"}}})}}),
               kChat, 2, "c.jsonl:1: key 'messages[1].role': a system message comes first only", {}, {}});
  c.push_back({"chat_no_user",
               files({{"c.jsonl", chat_line({{{"role", "assistant"}, {"content", "hi"}}})}}),
               kChat, 2, "c.jsonl:1: key 'messages': no user message", {}, {}});
  c.push_back({"chat_ok", files({{"c.jsonl", chat_line({{{"role", "user"}, {"content", "What is two plus two?"}},
                                                         {{"role", "assistant"}, {"content", "Four, as it happens."}}})}}),
               kChat, 0, "", {}, {}});
  return c;
}

class HostileOutputs : public testing::TestWithParam<Case> {};

TEST_P(HostileOutputs, Case) {
  const Case& k = GetParam();
  const std::string d = test::make_temp_dir("hostile-" + k.name);
  const std::string scratch = test::make_temp_dir("hostile-io");
  test::write_file(d + "/calib.ids", ids_text(144, 7));
  if (k.setup && !k.setup(d)) GTEST_SKIP() << "no fixture for this case on this machine";
  std::map<std::string, std::string> before;
  for (const auto& p : k.untouched) before[p] = test::read_file(d + "/" + p);

  const std::string args = expand(k.command, d);
  const test::SplitResult r = run_split(args, scratch);
  EXPECT_EQ(r.exit_code, k.exit_code) << args << "\nstdout: " << r.out << "\nstderr: " << r.err;
  if (k.exit_code != 0) {
    EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_EQ(r.err.back(), '\n') << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;  // failed before printing anything
    EXPECT_NE(r.err.find(k.message), std::string::npos) << "missing \"" << k.message << "\" in " << r.err;
  }
  for (const auto& f : k.forbidden) EXPECT_EQ(r.err.find(f), std::string::npos) << "stderr has " << f << ": " << r.err;
  for (const auto& [p, text] : before) {
    EXPECT_TRUE(fs::exists(d + "/" + p)) << p << " was removed";
    EXPECT_EQ(test::read_file(d + "/" + p), text) << p << " was changed";
  }
  if (k.exit_code == 0 && fs::is_directory(d + "/o")) {
    EXPECT_TRUE(fs::exists(d + "/o/" + kMarker));  // the directory is claimed
    for (const auto& e : fs::directory_iterator(d + "/o")) {
      const std::string n = e.path().filename().string();
      EXPECT_FALSE(n.size() > 4 && n.compare(n.size() - 4, 4, ".tmp") == 0 && !before.count("o/" + n))
          << "temporary left behind: " << n;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cli, HostileOutputs, testing::ValuesIn(cases()),
                         [](const testing::TestParamInfo<Case>& i) { return i.param.name; });

// ---- direct library calls ----------------------------------------------------------------------

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput) << e.what();
    return e.what();
  }
  return "(no error)";
}

TEST(HostileState, LibraryErrorsNameTheFileAndKey) {
  const std::string d = test::make_temp_dir("hostile-state");
  test::write_file(d + "/calib.ids", ids_text(144, 7));
  const json base = template_state(d + "/calib.ids");
  const report::StateMeta meta{kGlm, kLayers, fingerprint_of(d + "/calib.ids"), 3};
  const CalibrationState ok = report::state_from_json(base.dump(), "s.json", meta);
  EXPECT_EQ(ok.steps.size(), 1u);
  EXPECT_EQ(ok.plan(), "FFFSFF");
  // The writer's text reads back the same.
  const CalibrationState again = report::state_from_json(report::state_to_json(ok, meta), "s.json", meta);
  EXPECT_EQ(again.plan(), ok.plan());
  EXPECT_EQ(again.full_loss, ok.full_loss);
  EXPECT_EQ(again.steps[0].candidates.size(), 2u);

  const std::vector<std::pair<std::function<void(json&)>, std::string>> edits = {
      {[](json& j) { j["num_layers"] = (1ull << 32) + kLayers; }, "s.json: key 'num_layers'"},
      {[](json& j) { j["full_loss"] = -0.001; }, "s.json: key 'full_loss': expected a finite number >= 0, found -0.001"},
      {[](json& j) { j["steps"][0]["flipped"] = (1ull << 32) + 3; }, "s.json: key 'steps[0].flipped': expected an integer in [1, 5]"},
      {[](json& j) { j["steps"][0]["candidates"][0]["layer"] = 6; }, "key 'steps[0].candidates[0].layer'"},
      {[](json& j) { j.erase("layer_forwards"); }, "s.json: key 'layer_forwards': missing"},
      {[](json& j) { j["version"] = 2; }, "unsupported state version 2"},
  };
  for (const auto& [edit, want] : edits) {
    json j = base;
    edit(j);
    const std::string msg = error_of([&] { report::state_from_json(j.dump(), "s.json", meta); });
    EXPECT_NE(msg.find(want), std::string::npos) << msg;
  }
}

TEST(HostileData, ChatLinesUseTheModelsChatFormat) {
  if (!fs::exists(kGlmTokenizer)) GTEST_SKIP() << "no " << kGlmTokenizer;
  const Tokenizer tok = Tokenizer::load(kGlmTokenizer);
  const ChatFormat glm = chat_format_for(Family::kGlmMoeDsa);
  EXPECT_EQ(glm.begin, ChatFormat::glm().begin);
  EXPECT_EQ(chat_format_for(Family::kDeepseekV32).begin, ChatFormat::deepseek_v3().begin);
  const std::string text = chat_line({{{"role", "user"}, {"content", "What is two plus two?"}},
                                      {{"role", "assistant"}, {"content", " Four."}}}) +
                           chat_line({{{"role", "user"}, {"content", "Hi"}}});
  DataOptions o{.ctx = 1024};
  o.chat = glm;
  const DataFile f = load_data_text(text, "chat.jsonl", &tok, o);
  ASSERT_EQ(f.windows.size(), 2u);
  const auto want = tok.encode(wrap_chat("What is two plus two?", glm) + " Four.");
  EXPECT_EQ(f.windows[0], want);
  const ChatMessage hi{"user", "Hi"};
  EXPECT_EQ(f.windows[1], tok.encode(render_chat({&hi, 1}, glm, /*generation_prompt=*/false)));
  // The framing's special tokens are single ids, as in `generate --chat`.
  EXPECT_EQ(f.windows[0][0], *tok.token_id("[gMASK]"));
  // Without a chat format (no model family known) a chat line is refused, naming the line.
  const std::string msg = error_of([&] { load_data_text(text, "chat.jsonl", &tok, {.ctx = 1024}); });
  EXPECT_NE(msg.find("chat.jsonl:1: key 'messages'"), std::string::npos) << msg;
  // The other shapes still load beside chat lines.
  const DataFile mixed = load_data_text("{\"text\": \"plain\"}\n{\"ids\": [1, 2]}\n" + chat_line({{{"role", "user"}, {"content", "x"}}}),
                                        "m.jsonl", &tok, o);
  EXPECT_EQ(mixed.windows.size(), 3u);
}

TEST(HostileData, IdsErrorsNameLineAndToken) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"1 2\n\n 3 4x\n", "d.ids:3: token '4x' is not a token id"},
      {"1\n-0\n", "d.ids:2: token '-0' is negative"},
      {"1 +5\n", "d.ids:1: token '+5' is not a token id"},
      {"1 2147483648\n", "d.ids:1: token id '2147483648' is too large"},
      {"1 18446744073709551617\n", "d.ids:1: token id '18446744073709551617' is too large"},
      {"1 0x10\n", "d.ids:1: token '0x10'"},
  };
  for (const auto& [text, want] : bad) {
    const std::string msg = error_of([&] { load_data_text(text, "d.ids", nullptr, {.ctx = 8}); });
    EXPECT_NE(msg.find(want), std::string::npos) << msg;
  }
  const DataFile ok = load_data_text("1 2\t3\r\n4\n", "d.ids", nullptr, {.ctx = 8});
  EXPECT_EQ(ok.windows.at(0), (std::vector<int32_t>{1, 2, 3, 4}));
}

}  // namespace
}  // namespace indexcache
