// eval / overlap / calibrate through the CLI on the golden models, with token-id data written into
// temp dirs: the outputs (JSON, CSV, SVG, plan, report, exported config, overrides), --resume
// equivalence, and the bad-input contract (exit 2, one `error: ...` line). Also the data loader on
// text through a real tokenizer.json.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "backend/backend.h"
#include "indexcache/report.h"
#include "indexcache/calibrate.h"
#include "indexcache/dataset.h"
#include "indexcache/error.h"
#include "indexcache/model.h"
#include "indexcache/retrieval.h"
#include "indexcache/session.h"
#include "indexcache/tokenizer.h"
#include "test_util.h"

namespace indexcache {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::run_cli;

const std::string kGlm = test::test_data_dir() + "/golden/glm_a";  // 6 layers, vocab 256, k 16
constexpr int kLayers = 6;

std::vector<int32_t> random_ids(int n, uint32_t seed, int vocab = 256) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(0, vocab - 1);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::string ids_text(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? (i % 20 ? " " : "\n") : "") + std::to_string(ids[i]);
  return s + "\n";
}

// A temp dir holding calib.ids: 3 windows of 48 tokens at --ctx 48 (k = 16: sharing matters).
struct Workdir {
  std::string dir;
  std::string ids;
  explicit Workdir(const std::string& tag) : dir(test::make_temp_dir(tag)), ids(dir + "/calib.ids") {
    test::write_file(ids, ids_text(random_ids(144, 7)));
  }
};

// The JSON document in mixed stdout + stderr output (progress lines come first, on stderr).
json json_in(const std::string& out) {
  const size_t p = out.find("{\n");
  if (p == std::string::npos) return json();
  return json::parse(out.substr(p), nullptr, false);
}

void expect_bad_input(const std::string& args, const std::vector<std::string>& needles) {
  const auto r = run_cli(args);
  EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.output;
  EXPECT_EQ(r.output.rfind("error: ", 0), 0u) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  for (const auto& n : needles) EXPECT_NE(r.output.find(n), std::string::npos) << "missing '" << n << "' in " << r.output;
}

std::string calibrate_args(const Workdir& w, const std::string& out, const std::string& extra = "--keep-layers 2") {
  return "calibrate -m " + kGlm + " --data " + w.ids + " --ctx 48 --out " + out + " " + extra;
}

std::string read_plan(const std::string& out) {
  std::string p = test::read_file(out + "/plan.txt");
  while (!p.empty() && (p.back() == '\n' || p.back() == '\r')) p.pop_back();
  return p;
}

// ---- eval ---------------------------------------------------------------------------------------

TEST(EvalCli, TwoPlansSideBySideOnTheSameWindows) {
  Workdir w("eval");
  // Retrieval items: one whose answer is the model's own greedy continuation (correct under all-F),
  // one with a wrong answer.
  auto model = Model::load(kGlm);
  auto be = make_cpu_backend();
  const auto prompt = random_ids(30, 11);
  std::vector<int32_t> greedy;
  {
    Session s(*model, IndexPlan::full(kLayers), *be);
    ForwardOptions fo;
    fo.logits = LogitsWanted::kLast;
    auto r = s.forward(prompt, fo);
    for (int i = 0; i < 3; ++i) {
      const int32_t next = static_cast<int32_t>(std::max_element(r.logits.begin(), r.logits.end()) - r.logits.begin());
      greedy.push_back(next);
      r = s.forward(std::span<const int32_t>(&next, 1), fo);
    }
  }
  std::vector<int32_t> wrong = greedy;
  wrong[1] = (wrong[1] + 1) % 256;
  const std::string ret = w.dir + "/ret.jsonl";
  test::write_file(ret, json({{"task", "echo"}, {"prompt_ids", prompt}, {"answer_ids", greedy}}).dump() + "\n\n" +
                            json({{"task", "echo"}, {"prompt_ids", prompt}, {"answer_ids", wrong}}).dump() + "\n");

  const auto r = run_cli("eval -m " + kGlm + " --data " + w.ids + " " + ret + " --ctx 48 --plan full --plan 1/2 --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json j = json_in(r.output);
  ASSERT_TRUE(j.is_object()) << r.output;
  ASSERT_EQ(j["plans"].size(), 2u);
  EXPECT_EQ(j["plans"][0]["plan"], "FFFFFF");
  EXPECT_EQ(j["plans"][1]["plan"], "FSFSFS");
  const json& a = j["plans"][0]["results"][0];
  const json& b = j["plans"][1]["results"][0];
  EXPECT_EQ(a["tokens"], 3 * 47);
  EXPECT_EQ(a["tokens"], b["tokens"]);  // same windows for both plans
  EXPECT_NE(a["loss"].get<double>(), b["loss"].get<double>());
  EXPECT_NEAR(a["perplexity"].get<double>(), std::exp(a["loss"].get<double>()), 1e-9 * a["perplexity"].get<double>());
  // The CLI's loss is the library's loss of the same plan on the same windows.
  const auto windows = make_windows(random_ids(144, 7), 48);
  for (int p = 0; p < 2; ++p) {
    const IndexPlan plan = IndexPlan::from_pattern(j["plans"][p]["plan"], kLayers);
    EXPECT_NEAR(j["plans"][p]["results"][0]["loss"].get<double>(), plan_loss(*model, plan, windows, *be), 1e-9);
  }
  const json& ra = j["plans"][0]["results"][1]["retrieval"];
  EXPECT_EQ(ra["items"], 2);
  EXPECT_EQ(ra["correct"], 1);
  EXPECT_EQ(ra["wrong_lines"], json::array({3}));
  EXPECT_EQ(ra["by_task"]["echo"]["items"], 2);
  // The library agrees item by item.
  RetrievalItem good{.task = "", .answer = "", .prompt_ids = prompt, .answer_ids = greedy, .line = 1};
  EXPECT_TRUE(retrieval_correct(*model, IndexPlan::full(kLayers), good, *be));

  // Text output: one row per (file, plan).
  const auto t = run_cli("eval -m " + kGlm + " --data " + w.ids + " " + ret + " --ctx 48 --plan full 1/2");
  ASSERT_EQ(t.exit_code, 0) << t.output;
  EXPECT_NE(t.output.find("FSFSFS"), std::string::npos) << t.output;
  EXPECT_NE(t.output.find("retrieval accuracy"), std::string::npos) << t.output;
  EXPECT_NE(t.output.find("1/2"), std::string::npos) << t.output;
}

TEST(EvalCli, DefaultPlanIsTheConfigs) {
  Workdir w("eval-default");
  const auto r = run_cli("eval -m " + kGlm + " --data " + w.ids + " --ctx 48 --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json j = json_in(r.output);
  ASSERT_EQ(j["plans"].size(), 1u);
  EXPECT_EQ(j["plans"][0]["name"], "config");
}

// ---- overlap ------------------------------------------------------------------------------------

TEST(OverlapCli, WritesJsonCsvAndSvg) {
  Workdir w("overlap");
  const std::string out = w.dir + "/ov";
  const auto r = run_cli("overlap -m " + kGlm + " --data " + w.ids + " --ctx 48 --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json j = json::parse(test::read_file(out + "/overlap.json"), nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  EXPECT_EQ(j["num_layers"], kLayers);
  EXPECT_EQ(j["k"], 16);
  EXPECT_EQ(j["queries"], 3 * (48 - 16));  // queries t >= k of each window
  const auto m = j["matrix"].get<std::vector<std::vector<double>>>();
  ASSERT_EQ(m.size(), static_cast<size_t>(kLayers));
  for (int i = 0; i < kLayers; ++i) {
    ASSERT_EQ(m[i].size(), static_cast<size_t>(kLayers));
    EXPECT_DOUBLE_EQ(m[i][i], 1.0);
    for (int k = 0; k < kLayers; ++k) {
      EXPECT_DOUBLE_EQ(m[i][k], m[k][i]);
      EXPECT_GE(m[i][k], 0.0);
      EXPECT_LE(m[i][k], 1.0);
    }
  }
  EXPECT_EQ(j["adjacent"].size(), static_cast<size_t>(kLayers - 1));

  std::istringstream csv(test::read_file(out + "/overlap.csv"));
  std::string line;
  std::vector<std::string> rows;
  while (std::getline(csv, line)) rows.push_back(line);
  ASSERT_EQ(rows.size(), static_cast<size_t>(kLayers + 1));
  EXPECT_EQ(rows[0], "layer,L0,L1,L2,L3,L4,L5");
  for (int i = 0; i < kLayers; ++i) {
    EXPECT_EQ(rows[i + 1].rfind("L" + std::to_string(i) + ",", 0), 0u);
    std::vector<std::string> cells;
    std::istringstream row(rows[i + 1]);
    for (std::string c; std::getline(row, c, ',');) cells.push_back(c);
    ASSERT_EQ(cells.size(), static_cast<size_t>(kLayers + 1));
    for (int k = 0; k < kLayers; ++k) EXPECT_NEAR(std::stod(cells[k + 1]), m[i][k], 1e-6);
  }

  const std::string svg = test::read_file(out + "/overlap.svg");
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  for (int i = 0; i < kLayers; ++i) EXPECT_NE(svg.find(">L" + std::to_string(i) + "<"), std::string::npos) << i;
  EXPECT_NE(svg.find("linearGradient"), std::string::npos);  // the colour scale
  EXPECT_NE(svg.find(">1.00<"), std::string::npos);           // its top tick
  EXPECT_NE(r.output.find("overlap.svg"), std::string::npos);
}

// ---- calibrate ----------------------------------------------------------------------------------

TEST(CalibrateCli, WritesPlanReportConfigAndOverrides) {
  Workdir w("calibrate");
  const std::string out = w.dir + "/out";
  const auto r = run_cli(calibrate_args(w, out));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string plan = read_plan(out);
  ASSERT_EQ(plan.size(), static_cast<size_t>(kLayers));
  EXPECT_EQ(plan[0], 'F');
  EXPECT_EQ(std::count(plan.begin(), plan.end(), 'F'), 2);

  const json rep = json::parse(test::read_file(out + "/report.json"), nullptr, false);
  ASSERT_FALSE(rep.is_discarded());
  for (const char* key : {"plan", "indexer_types", "index_topk_pattern", "full_loss", "steps", "comparison",
                          "layer_forwards", "timings", "overrides", "stop_reason", "files"})
    EXPECT_TRUE(rep.contains(key)) << key;
  EXPECT_EQ(rep["plan"], plan);
  ASSERT_EQ(rep["steps"].size(), 4u);  // 6 -> 2 F layers
  int candidates = kLayers - 1;
  for (const auto& st : rep["steps"]) {
    EXPECT_EQ(st["candidates"].size(), static_cast<size_t>(candidates--));
    double best = 1e300;
    for (const auto& c : st["candidates"]) best = std::min(best, c["loss"].get<double>());
    EXPECT_DOUBLE_EQ(st["loss"].get<double>(), best);  // the lowest-loss flip is committed
    EXPECT_TRUE(st.contains("flipped"));
    EXPECT_TRUE(st.contains("seconds"));
  }
  EXPECT_LT(rep["layer_forwards"]["done"].get<int64_t>(), rep["layer_forwards"]["naive"].get<int64_t>());
  EXPECT_TRUE(rep["timings"].contains("search_seconds"));
  std::vector<std::string> names;
  for (const auto& c : rep["comparison"]) {
    names.push_back(c["name"]);
    EXPECT_TRUE(c.contains("plan") && c.contains("full_layers") && c.contains("loss") && c.contains("increase_pct"));
  }
  auto has_name = [&](const std::string& n) {
    return std::any_of(names.begin(), names.end(), [&](const std::string& s) { return s.find(n) != std::string::npos; });
  };
  for (const char* n : {"searched", "uniform 2F", "1/2", "1/4", "1/8", "all-F"}) EXPECT_TRUE(has_name(n)) << n;
  EXPECT_EQ(rep["comparison"][0]["plan"], plan);
  // The report is a --plan source.
  const auto e = run_cli("eval -m " + kGlm + " --data " + w.ids + " --ctx 48 --plan " + out + "/report.json --json");
  ASSERT_EQ(e.exit_code, 0) << e.output;
  EXPECT_EQ(json_in(e.output)["plans"][0]["plan"], plan);

  // Config export: the plan's keys set, every other key and the key order unchanged.
  const nlohmann::ordered_json orig = nlohmann::ordered_json::parse(test::read_file(kGlm + "/config.json"));
  const nlohmann::ordered_json cfg = nlohmann::ordered_json::parse(test::read_file(out + "/config.indexcache.json"));
  std::vector<std::string> orig_keys, cfg_keys;
  for (auto it = orig.begin(); it != orig.end(); ++it) orig_keys.push_back(it.key());
  for (auto it = cfg.begin(); it != cfg.end(); ++it)
    if (orig.contains(it.key())) cfg_keys.push_back(it.key());
  EXPECT_EQ(orig_keys, cfg_keys);
  for (auto it = orig.begin(); it != orig.end(); ++it) {
    if (it.key() != "indexer_types" && it.key() != "index_topk_pattern") {
      EXPECT_EQ(cfg[it.key()], it.value()) << it.key();
    }
  }
  EXPECT_EQ(cfg["index_topk_pattern"], plan);
  ASSERT_EQ(cfg["indexer_types"].size(), static_cast<size_t>(kLayers));
  for (int l = 0; l < kLayers; ++l) EXPECT_EQ(cfg["indexer_types"][l], plan[l] == 'F' ? "full" : "shared");

  // Overrides: in the report and printed, each a parseable JSON in single quotes.
  for (const char* flag : {"--hf-overrides '", "--json-model-override-args '"}) {
    const size_t p = r.output.find(flag);
    ASSERT_NE(p, std::string::npos) << flag << "\n" << r.output;
    const size_t b = p + std::string(flag).size(), end = r.output.find('\'', b);
    const json o = json::parse(r.output.substr(b, end - b), nullptr, false);
    ASSERT_FALSE(o.is_discarded()) << r.output.substr(b, end - b);
    EXPECT_EQ(o["index_topk_pattern"], plan);
    EXPECT_EQ(o["indexer_types"], cfg["indexer_types"]);
    EXPECT_EQ(o.contains("use_index_cache"), std::string(flag) == "--hf-overrides '");
  }
  EXPECT_EQ(rep["overrides"]["vllm_json"]["use_index_cache"], true);
  EXPECT_NE(rep["overrides"]["vllm"].get<std::string>().find("--hf-overrides"), std::string::npos);
  EXPECT_NE(rep["overrides"]["sglang"].get<std::string>().find("--json-model-override-args"), std::string::npos);

  // Printed: the plan, the loss table, layer-forwards done vs naive, the report path.
  EXPECT_NE(r.output.find("plan         " + plan), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("uniform 2F"), std::string::npos);
  EXPECT_NE(r.output.find("layer-forwards"), std::string::npos);
  EXPECT_NE(r.output.find("naive"), std::string::npos);
  EXPECT_NE(r.output.find(out + "/report.json"), std::string::npos);
  const std::string svg = test::read_file(out + "/loss_curve.svg");
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("uniform plans"), std::string::npos);
  EXPECT_TRUE(fs::exists(out + "/state.json"));
}

TEST(CalibrateCli, KeepFractionAndMaxLossIncrease) {
  Workdir w("calibrate-stop");
  auto r = run_cli(calibrate_args(w, w.dir + "/a", "--keep 0.5"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::string plan = read_plan(w.dir + "/a");
  EXPECT_EQ(std::count(plan.begin(), plan.end(), 'F'), 3);
  r = run_cli(calibrate_args(w, w.dir + "/b", "--max-loss-increase 0"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json rep = json::parse(test::read_file(w.dir + "/b/report.json"));
  for (const auto& st : rep["steps"]) EXPECT_LE(st["loss"].get<double>(), rep["full_loss"].get<double>());
  EXPECT_EQ(rep["stop"]["max_loss_increase_pct"], 0.0);
  EXPECT_FALSE(rep["stop_reason"].get<std::string>().empty());
}

TEST(CalibrateCli, ResumeEndsWithTheSamePlan) {
  Workdir w("resume");
  const auto whole = run_cli(calibrate_args(w, w.dir + "/whole"));
  ASSERT_EQ(whole.exit_code, 0) << whole.output;
  const json ref = json::parse(test::read_file(w.dir + "/whole/report.json"));

  // Interrupted after one committed step, then resumed.
  const auto cut = run_cli(calibrate_args(w, w.dir + "/cut", "--keep-layers 2 --stop-after-steps 1"));
  ASSERT_EQ(cut.exit_code, 0) << cut.output;
  EXPECT_FALSE(fs::exists(w.dir + "/cut/plan.txt"));
  EXPECT_EQ(json::parse(test::read_file(w.dir + "/cut/state.json"))["steps"].size(), 1u);
  const auto resumed = run_cli(calibrate_args(w, w.dir + "/cut", "--keep-layers 2 --resume"));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_EQ(read_plan(w.dir + "/cut"), read_plan(w.dir + "/whole"));
  const json rep = json::parse(test::read_file(w.dir + "/cut/report.json"));
  EXPECT_EQ(rep["resumed_steps"], 1);
  ASSERT_EQ(rep["steps"].size(), ref["steps"].size());
  for (size_t i = 0; i < ref["steps"].size(); ++i) {
    EXPECT_EQ(rep["steps"][i]["flipped"], ref["steps"][i]["flipped"]);
    EXPECT_DOUBLE_EQ(rep["steps"][i]["loss"].get<double>(), ref["steps"][i]["loss"].get<double>());
  }

  // A state file cut back to its first step by hand resumes the same way.
  fs::create_directories(w.dir + "/trunc");
  json state = json::parse(test::read_file(w.dir + "/whole/state.json"));
  state["steps"].erase(state["steps"].begin() + 1, state["steps"].end());
  test::write_file(w.dir + "/trunc/state.json", state.dump(1));
  const auto again = run_cli(calibrate_args(w, w.dir + "/trunc", "--keep-layers 2 --resume"));
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(read_plan(w.dir + "/trunc"), read_plan(w.dir + "/whole"));
}

// ---- bad input ----------------------------------------------------------------------------------

TEST(CalibCliErrors, MissingDataFile) {
  Workdir w("err-data");
  const std::string missing = w.dir + "/nope.ids";
  expect_bad_input("calibrate -m " + kGlm + " --data " + missing + " --out " + w.dir + "/o", {missing, "not found"});
  expect_bad_input("eval -m " + kGlm + " --data " + missing, {missing});
  expect_bad_input("overlap -m " + kGlm + " --data " + missing + " --out " + w.dir + "/o", {missing});
}

TEST(CalibCliErrors, KeepOutsideRange) {
  Workdir w("err-keep");
  for (const char* v : {"0", "1.5", "-0.25"})
    expect_bad_input(calibrate_args(w, w.dir + "/o", std::string("--keep ") + v), {"--keep", "(0, 1]"});
  expect_bad_input(calibrate_args(w, w.dir + "/o", "--keep-layers 0"), {"--keep-layers"});
  expect_bad_input(calibrate_args(w, w.dir + "/o", "--keep-layers 7"), {"--keep-layers"});
  // Exclusive stop rules: a usage error.
  const auto r = run_cli(calibrate_args(w, w.dir + "/o", "--keep 0.5 --keep-layers 2"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
}

TEST(CalibCliErrors, ConfigWithoutDsa) {
  Workdir w("err-dsa");
  const std::string m = w.dir + "/model";
  fs::create_directories(m);
  fs::copy_file(kGlm + "/model.safetensors", m + "/model.safetensors");
  json cfg = json::parse(test::read_file(kGlm + "/config.json"));
  cfg["model_type"] = "llama";
  cfg["architectures"] = json::array({"LlamaForCausalLM"});
  test::write_file(m + "/config.json", cfg.dump(2));
  for (const std::string cmd : {"calibrate", "overlap", "eval"})
    expect_bad_input(cmd + " -m " + m + " --data " + w.ids + (cmd == "eval" ? "" : " --out " + w.dir + "/o"),
                     {"model_type", "llama"});
}

TEST(CalibCliErrors, UnreadableResumeState) {
  Workdir w("err-state");
  const std::string out = w.dir + "/o";
  // No state file at all.
  expect_bad_input(calibrate_args(w, out, "--keep-layers 2 --resume"), {out + "/state.json"});
  // Not JSON.
  fs::create_directories(out);
  test::write_file(out + "/state.json", "{\"version\": 1, \"steps\": [");
  expect_bad_input(calibrate_args(w, out, "--keep-layers 2 --resume"), {out + "/state.json", "invalid JSON"});
  // A state from other data.
  const auto r = run_cli(calibrate_args(w, out, "--keep-layers 4"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  test::write_file(w.dir + "/other.ids", ids_text(random_ids(144, 8)));
  expect_bad_input("calibrate -m " + kGlm + " --data " + w.dir + "/other.ids --ctx 48 --out " + out +
                       " --keep-layers 2 --resume",
                   {"state.json", "other calibration data"});
  // A step that does not follow from the one before it.
  json state = json::parse(test::read_file(out + "/state.json"));
  state["steps"][0]["plan"] = "FSSSSS";
  test::write_file(out + "/state.json", state.dump());
  expect_bad_input(calibrate_args(w, out, "--keep-layers 2 --resume"), {"steps[0]"});
}

TEST(CalibCliErrors, OtherDataProblems) {
  Workdir w("err-other");
  // Ids outside the vocabulary.
  test::write_file(w.dir + "/big.ids", "1 2 3 999 4\n");
  expect_bad_input("eval -m " + kGlm + " --data " + w.dir + "/big.ids", {"big.ids", "999", "vocabulary"});
  // Text for a model without a tokenizer.
  test::write_file(w.dir + "/t.txt", "hello there\n");
  expect_bad_input("eval -m " + kGlm + " --data " + w.dir + "/t.txt", {"t.txt", "tokenizer"});
  // Unknown kind, bad JSONL line, window longer than the model allows.
  test::write_file(w.dir + "/x.csv", "1,2\n");
  expect_bad_input("eval -m " + kGlm + " --data " + w.dir + "/x.csv", {"x.csv", ".ids"});
  test::write_file(w.dir + "/bad.jsonl", "{\"ids\": [1, 2, 3]}\n{oops\n");
  expect_bad_input("eval -m " + kGlm + " --data " + w.dir + "/bad.jsonl", {"bad.jsonl:2", "invalid JSON"});
  expect_bad_input("eval -m " + kGlm + " --data " + w.ids + " --ctx 100000", {"--ctx", "max_position_embeddings"});
}

// ---- the data loader on text --------------------------------------------------------------------

TEST(Dataset, TextAndJsonlThroughATokenizer) {
  const std::string tok_path = test::test_data_dir() + "/tokenizer/glm_style/tokenizer.json";
  if (!fs::exists(tok_path)) GTEST_SKIP() << "no " << tok_path;
  const Tokenizer tok = Tokenizer::load(tok_path);
  const std::string dir = test::make_temp_dir("dataset");
  const std::string text = "The quick brown fox jumps over the lazy dog. It was the best of times.<|endoftext|>Next.";
  test::write_file(dir + "/a.txt", text);
  const DataFile t = load_data_file(dir + "/a.txt", &tok, {.ctx = 8});
  const auto ids = tok.encode(text);
  EXPECT_EQ(t.stream_tokens, static_cast<int64_t>(ids.size()));
  EXPECT_EQ(t.windows, make_windows(ids, 8));
  EXPECT_EQ(t.name, "a.txt");

  json line1 = {{"text", "alpha beta gamma delta"}};
  json line2 = {{"task", "passkey"}, {"prompt", "The pass key is"}, {"answer", " 12345"}};
  json line3 = {{"prompt", "x"}, {"answer", "y"}, {"answer_ids", {5, 6}}};
  test::write_file(dir + "/b.jsonl", line1.dump() + "\n" + line2.dump() + "\n" + line3.dump() + "\n");
  const DataFile j = load_data_file(dir + "/b.jsonl", &tok, {.ctx = 1024});
  ASSERT_EQ(j.windows.size(), 1u);
  EXPECT_EQ(j.windows[0], tok.encode("alpha beta gamma delta"));
  ASSERT_EQ(j.items.size(), 2u);
  EXPECT_EQ(j.items[0].task, "passkey");
  EXPECT_EQ(j.items[0].prompt_ids, tok.encode("The pass key is"));
  EXPECT_EQ(j.items[0].answer_ids, tok.encode(" 12345"));
  EXPECT_EQ(j.items[0].line, 2);
  EXPECT_EQ(j.items[1].answer_ids, (std::vector<int32_t>{5, 6}));  // given ids win over the text
  // Limits.
  EXPECT_EQ(load_data_file(dir + "/a.txt", &tok, {.ctx = 4, .max_windows = 2}).windows.size(), 2u);
  EXPECT_EQ(load_data_file(dir + "/b.jsonl", &tok, {.ctx = 1024, .max_items = 1}).items.size(), 1u);
  // The ids are checked against the model's vocabulary.
  EXPECT_THROW(load_data_file(dir + "/a.txt", &tok, {.ctx = 8, .vocab_size = 10}), Error);
}

TEST(Dataset, DefaultFilesAndDataDir) {
  const std::string dir = test::make_temp_dir("defaults");
  for (const char* f : {"calibration.txt", "heldout.txt", "retrieval_1k.jsonl", "retrieval_2k.jsonl", "retrieval_4k.jsonl",
                        "notes.md"})
    test::write_file(dir + "/" + f, "x");
  const auto cal = default_data_files(dir, DataUse::kCalibration);
  ASSERT_EQ(cal.size(), 1u);
  EXPECT_EQ(fs::path(cal[0]).filename(), "calibration.txt");
  const auto ev = default_data_files(dir, DataUse::kEval);
  std::vector<std::string> names;
  for (const auto& p : ev) names.push_back(fs::path(p).filename().string());
  EXPECT_EQ(names, (std::vector<std::string>{"heldout.txt", "retrieval_1k.jsonl", "retrieval_2k.jsonl", "retrieval_4k.jsonl"}));
  EXPECT_THROW(default_data_files(dir + "/missing", DataUse::kEval), Error);
  EXPECT_EQ(embedded_data_dir("/repo/models/default"), "/repo/data");
  EXPECT_EQ(embedded_data_dir("/repo/models/default/"), "/repo/data");
}

TEST(Report, UniformAndComparisonPlans) {
  EXPECT_EQ(report::uniform_plan(6, 2).pattern(), "FSSFSS");
  EXPECT_EQ(report::uniform_plan(8, 2).pattern(), "FSSSFSSS");
  EXPECT_EQ(report::uniform_plan(6, 6).pattern(), "FFFFFF");
  EXPECT_EQ(report::uniform_plan(6, 1).pattern(), "FSSSSS");
  // uniform 3F of 6 layers is 1/2: merged into one row.
  const auto plans = report::comparison_plans(IndexPlan::from_pattern("FFSSFS", 6));
  std::vector<std::string> names;
  for (const auto& p : plans) names.push_back(p.name);
  EXPECT_EQ(names, (std::vector<std::string>{"searched", "uniform 3F = 1/2", "1/4", "1/8", "all-F"}));
  // Export keeps formatting-independent content and order.
  const std::string cfg = R"({"b": 1, "a": [1, 2], "indexer_types": ["full", "full"], "z": {"y": 1e-05}})";
  const auto out = nlohmann::ordered_json::parse(report::export_config(cfg, IndexPlan::from_pattern("FS", 2), "c"));
  std::vector<std::string> keys;
  for (auto it = out.begin(); it != out.end(); ++it) keys.push_back(it.key());
  EXPECT_EQ(keys, (std::vector<std::string>{"b", "a", "indexer_types", "z", "index_topk_pattern"}));
  EXPECT_EQ(out["z"]["y"].get<double>(), 1e-05);
  EXPECT_EQ(out["indexer_types"], json::array({"full", "shared"}));
}

}  // namespace
}  // namespace indexcache
