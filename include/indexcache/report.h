// What the eval / overlap / calibrate commands compute and write: the drivers that run the model
// over loaded data, and the reports (JSON, CSV, SVG, text tables), the exported config, the
// vLLM / SGLang override strings and the resumable calibration state file (progress lines:
// indexcache/progress.h). Public: the CLI builds on it.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "indexcache/calibrate.h"
#include "indexcache/dataset.h"
#include "indexcache/evaluate.h"
#include "indexcache/index_plan.h"
#include "indexcache/retrieval.h"

namespace indexcache {
class Model;
class Backend;
}  // namespace indexcache

namespace indexcache::report {

using ordered_json = nlohmann::ordered_json;

// ---- files -------------------------------------------------------------------------------------
// Creates `dir` (and parents); kBadInput naming it when that fails or it is a file.
void ensure_dir(const std::string& dir);
// Writes `text` to `path` atomically and durably: write_file_atomic (indexcache/output_dir.h). The
// commands write through their OutputDir, which also checks and claims the directory first.
void write_file(const std::string& path, const std::string& text);
std::string read_file(const std::string& path);  // kBadInput naming the file when unreadable

// ---- terminal progress -------------------------------------------------------------------------
// "1m05s", "12.3s", "2h03m".
std::string format_duration(double seconds);

// ---- plans compared in every report --------------------------------------------------------------
struct NamedPlan {
  std::string name;
  IndexPlan plan;
};
// `num_full` F layers spread evenly: layer floor(j * N / num_full) is F for j = 0..num_full-1.
IndexPlan uniform_plan(int num_layers, int num_full);
// The searched plan first, then uniform plans of its F count, 1/2, 1/4, 1/8, the search's start
// plan (when it is not all-F) and all-F (plans equal to one before them dropped).
std::vector<NamedPlan> comparison_plans(const IndexPlan& searched, const std::string& start_plan = "");

struct PlanLoss {
  std::string name, plan;
  int full_layers = 0;
  double loss = 0, increase_pct = 0;  // increase over the state's reference (all-F or its start)
};
// Calibration loss of every comparison plan the model can run (plans needing an indexer it lacks
// are left out): the searched and start plans come from `state`, the others run on `batches`.
std::vector<PlanLoss> score_comparison(const Model& model, const std::vector<std::vector<int32_t>>& batches,
                                       Backend& backend, const CalibrationState& state,
                                       const std::function<void(const std::string&)>& on_plan = {});
// Text table: plan, pattern, F layers, loss, increase %.
std::string loss_table(const std::vector<PlanLoss>& rows, const std::string& reference = "all-F");

// ---- exports -------------------------------------------------------------------------------------
// config.json text with `indexer_types` and `index_topk_pattern` set to `plan` (added at the end
// when absent) and every other key, its value and the key order unchanged.
std::string export_config(const std::string& config_text, const IndexPlan& plan, const std::string& source);
// {"indexer_types": [...], "index_topk_pattern": "..."} (+ "use_index_cache": true for vLLM).
ordered_json override_keys(const IndexPlan& plan, bool vllm);
std::string vllm_override_arg(const IndexPlan& plan);    // --hf-overrides '{...}'
std::string sglang_override_arg(const IndexPlan& plan);  // --json-model-override-args '{...}'

// ---- calibration state (for --resume) ------------------------------------------------------------
struct StateMeta {
  std::string model_dir;
  int num_layers = 0;
  std::string data_fingerprint;
  int64_t windows = 0;
};
std::string state_to_json(const CalibrationState& state, const StateMeta& meta);
// Parses a state file (bounded JSON) and checks it belongs to `expected` (layers and data
// fingerprint). Every problem is kBadInput naming `path` and the key ("steps[2].loss"): integers
// range-checked without wrapping (layers in [0, num_layers), counts >= 0), losses and seconds
// finite and >= 0, each step's plan following from the one before.
CalibrationState state_from_json(const std::string& text, const std::string& path, const StateMeta& expected);
// Reads and parses the state file at `path` (kBadInput when it is missing or unreadable).
CalibrationState load_state(const std::string& path, const StateMeta& expected);

// ---- calibration report ---------------------------------------------------------------------------
struct DataSummary {
  std::string path;
  int64_t windows = 0, tokens = 0;
};
std::vector<DataSummary> summarize(const std::vector<DataFile>& files);

struct CalibrationRun {
  std::string model_dir, model_type;
  int num_layers = 0, index_topk = 0, ctx = 0;
  std::vector<DataSummary> data;
  std::string data_fingerprint;
  CalibrateStop stop;
  CalibrationState state;
  std::vector<PlanLoss> comparison;
  int resumed_steps = -1;  // steps taken from the state file (-1: not resumed)
  double load_seconds = 0, search_seconds = 0, comparison_seconds = 0, total_seconds = 0;
  std::vector<std::pair<std::string, std::string>> files;  // what -> path
};
// report.json: plan (also as indexer_types / index_topk_pattern), stop rule and reason, all-F loss,
// every step (layer flipped, loss, increase, every candidate's loss, seconds), the comparison
// table, layer-forward counts against the naive search, timings, override strings, files.
ordered_json calibration_report(const CalibrationRun& run);
// What calibrate prints: model and data, the search steps, the plan, the loss table, layer-forwards
// done vs the naive search, timings, where the files are, the override strings.
std::string calibration_summary(const CalibrationRun& run);
// Loss against the number of S layers along the search, uniform plans as separate markers.
std::string loss_curve_svg(const CalibrationRun& run);

// ---- overlap ------------------------------------------------------------------------------------
struct OverlapResult {
  std::vector<std::vector<double>> matrix;  // [N][N]
  int64_t queries = 0;
  int k = 0;
  int64_t windows = 0, tokens = 0;
};
// Runs every window all-F, capturing each layer's own selection.
OverlapResult overlap_on(const Model& model, const std::vector<std::vector<int32_t>>& windows, Backend& backend,
                         const std::function<void(int done, int total)>& on_window = {});
ordered_json overlap_json(const OverlapResult& r, const std::string& model_dir, const std::vector<DataSummary>& data);
std::string overlap_csv(const OverlapResult& r);
std::string overlap_svg(const OverlapResult& r, const std::string& title);

// ---- eval ---------------------------------------------------------------------------------------
struct EvalResults {
  std::vector<NamedPlan> plans;
  std::vector<DataSummary> data;
  std::vector<std::string> data_names;
  std::vector<bool> has_windows, has_items;       // per file
  std::vector<std::vector<LossSum>> loss;          // [plan][file]
  std::vector<std::vector<RetrievalScore>> retrieval;  // [plan][file]
  double seconds = 0;
};
// Every plan on the same windows and items of every file.
EvalResults evaluate_plans(const Model& model, const std::vector<NamedPlan>& plans, const std::vector<DataFile>& files,
                           Backend& backend, const std::function<void(int done, int total)>& on_unit = {});
ordered_json eval_json(const EvalResults& r, const std::string& model_dir, int ctx);
std::string eval_text(const EvalResults& r);

}  // namespace indexcache::report
