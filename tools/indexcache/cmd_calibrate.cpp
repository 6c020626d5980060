// `indexcache calibrate`: the training-free greedy IndexCache search on calibration data; writes the
// plan, a report (JSON + SVG), the config with the plan's keys, and the vLLM / SGLang overrides.
#include <fmt/core.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <optional>

#include "indexcache/report.h"
#include "indexcache/progress.h"
#include "commands.h"
#include "flags.h"
#include "indexcache/calibrate.h"
#include "indexcache/dataset.h"
#include "indexcache/error.h"
#include "indexcache/model.h"
#include "indexcache/output_dir.h"

namespace indexcache::cli {

namespace {

struct CalibrateFlags {
  DeviceFlags device;
  std::string model, out = "indexcache-calibrate";
  std::vector<std::string> data;
  int ctx = 0, max_windows = 4;
  std::optional<double> keep, max_loss_increase;
  std::optional<int> keep_layers;
  bool resume = false, naive = false, force = false;
  int stop_after_steps = 0;  // hidden, for tests: stop as if interrupted after N committed steps
};

struct StopRequested {};

double since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

int run_calibrate(const CalibrateFlags& f) {
  const auto t_start = std::chrono::steady_clock::now();
  if (f.keep && !(*f.keep > 0 && *f.keep <= 1)) throw_bad_input("--keep", fmt::format("{} is outside (0, 1]", *f.keep));
  if (f.max_loss_increase && !(*f.max_loss_increase >= 0))
    throw_bad_input("--max-loss-increase", "must be a percentage >= 0");
  if (f.max_windows < 0) throw_bad_input("--max-windows", "must be >= 0");
  const std::string dir = resolve_model_dir(f.model);
  const ModelSpec spec = load_model_spec(dir);
  if (f.keep_layers && (*f.keep_layers < 1 || *f.keep_layers > spec.num_layers))
    throw_bad_input("--keep-layers", fmt::format("{} is outside [1, {}]", *f.keep_layers, spec.num_layers));

  CalibrateStop stop;
  stop.keep_fraction = f.keep;
  stop.keep_layers = f.keep_layers;
  stop.max_loss_increase = f.max_loss_increase;
  if (!f.keep && !f.keep_layers && !f.max_loss_increase) stop.keep_fraction = 0.25;

  const int ctx = resolve_ctx(f.ctx, spec.max_position_embeddings, 1024);
  // The output directory is checked and claimed before anything is loaded or computed.
  const std::string state_name = "state.json";
  std::error_code ec;
  if (f.resume && !std::filesystem::is_directory(f.out, ec))
    throw_bad_input(f.out + "/" + state_name, "no saved search to resume (run without --resume first)");
  const OutputDir out = OutputDir::open(
      f.out, {.command = "calibrate", .force = f.force, .model_dir = dir,
              .adoptable = f.resume ? std::vector<std::string>{state_name} : std::vector<std::string>{}});
  const std::string state_path = out.file(state_name);

  const auto files = load_model_data(dir, f.data, DataUse::kCalibration, embedded_data_dir(INDEXCACHE_DEFAULT_MODEL),
                                     {.ctx = ctx, .max_windows = f.max_windows, .max_items = 0, .vocab_size = spec.vocab_size});
  const auto batches = all_windows(files);
  if (batches.empty()) throw_bad_input("--data", "no text windows to calibrate on (retrieval items are not used)");

  const report::StateMeta meta{dir, spec.num_layers, windows_fingerprint(batches), static_cast<int64_t>(batches.size())};
  std::optional<CalibrationState> resume;
  if (f.resume) resume = report::load_state(state_path, meta);
  const int resumed_steps = resume ? static_cast<int>(resume->steps.size()) : -1;

  LoadOptions lo;
  lo.require_indexer.assign(spec.num_layers, false);  // every indexer present; the search starts from those layers
  auto model = Model::load(dir, lo);
  auto backend = open_backend(f.device, *model);
  const double load_seconds = since(t_start);

  Progress progress;
  int steps_this_run = 0;
  const int offset = std::max(0, resumed_steps);
  CalibrateOptions opt;
  opt.stop = stop;
  opt.naive = f.naive;
  opt.on_progress = [&](const CalibrateProgress& p) {
    progress.update(fmt::format("calibrate: step {}/{}, candidate {}/{} | elapsed {} | ETA {}", offset + p.step,
                                offset + p.total_steps, p.candidate, p.candidates, report::format_duration(p.elapsed_seconds),
                                report::format_duration(p.eta_seconds)));
  };
  opt.on_step = [&](const CalibrationState& s) {
    out.write(state_name, report::state_to_json(s, meta));
    const CalibrationStep& st = s.steps.back();
    progress.note(fmt::format("step {}: layer {} -> S, loss {:.5f} ({:+.2f} % over {}), {}", s.steps.size(), st.flipped,
                              st.loss, 100.0 * (st.loss - s.full_loss) / s.full_loss, s.reference(),
                              report::format_duration(st.seconds)));
    if (f.stop_after_steps > 0 && ++steps_this_run >= f.stop_after_steps) throw StopRequested{};
  };
  progress.note(fmt::format("calibrate: {} windows x {} tokens, {} layers{}", batches.size(), ctx, spec.num_layers,
                            resume ? fmt::format(", resuming after {} steps", resumed_steps) : ""));
  const auto t_search = std::chrono::steady_clock::now();
  CalibrationState state;
  try {
    state = calibrate(*model, batches, *backend, opt, resume);
  } catch (const StopRequested&) {
    progress.done();
    fmt::print("stopped after {} step(s) (--stop-after-steps); state saved to {}: continue with --resume\n",
               steps_this_run, state_path);
    return 0;
  }
  const double search_seconds = since(t_search);
  out.write(state_name, report::state_to_json(state, meta));

  const auto t_cmp = std::chrono::steady_clock::now();
  const auto comparison = report::score_comparison(*model, batches, *backend, state, [&](const std::string& name) {
    progress.update("calibrate: scoring plan " + name);
  });
  progress.done();

  report::CalibrationRun run;
  run.model_dir = dir;
  run.model_type = spec.model_type;
  run.num_layers = spec.num_layers;
  run.index_topk = spec.index_topk;
  run.ctx = ctx;
  run.data = report::summarize(files);
  run.data_fingerprint = meta.data_fingerprint;
  run.stop = stop;
  run.state = state;
  run.comparison = comparison;
  run.resumed_steps = resumed_steps;
  run.load_seconds = load_seconds;
  run.search_seconds = search_seconds;
  run.comparison_seconds = since(t_cmp);
  const std::string plan_name = "plan.txt", report_name = "report.json", svg_name = "loss_curve.svg",
                    config_name = "config.indexcache.json";
  run.files = {{"plan", out.file(plan_name)}, {"report", out.file(report_name)}, {"loss_curve", out.file(svg_name)},
               {"config", out.file(config_name)}, {"state", state_path}};
  const IndexPlan plan = IndexPlan::from_pattern(state.plan(), spec.num_layers);
  out.write(plan_name, plan.pattern() + "\n");
  out.write(config_name, report::export_config(report::read_file(dir + "/config.json"), plan, dir + "/config.json"));
  out.write(svg_name, report::loss_curve_svg(run));
  run.total_seconds = since(t_start);
  out.write(report_name, report::calibration_report(run).dump(2) + "\n");
  fmt::print("{}", report::calibration_summary(run));
  return 0;
}

}  // namespace

Runner register_calibrate(CLI::App& app) {
  auto f = std::make_shared<CalibrateFlags>();
  app.add_option("-m,--model", f->model, "model directory (default: the embedded model)");
  add_device_flags(app, f->device);
  app.add_option("--data", f->data, "calibration files: .txt, .jsonl ({\"text\"}, {\"ids\"} or chat {\"messages\"} lines) or .ids (default: data/calibration.txt)");
  app.add_option("--ctx", f->ctx, "window length in tokens (default: min(1024, max_position_embeddings))")
      ->check(integer_in(2, kMaxTokensFlag));
  app.add_option("--max-windows", f->max_windows, "windows per data file (default 4; 0: all)")
      ->check(integer_in(0, kMaxCountFlag));
  auto* keep = app.add_option("--keep", f->keep, "stop at this fraction of F layers, in (0, 1] (default 0.25)");
  auto* keep_layers = app.add_option("--keep-layers", f->keep_layers, "stop at this many F layers")
                          ->check(integer_in(1, kMaxLayersFlag));
  auto* max_inc = app.add_option("--max-loss-increase", f->max_loss_increase,
                                 "stop before a flip raising the loss more than X % over all-F (or the start plan of a model without every indexer)");
  keep->excludes(keep_layers)->excludes(max_inc);
  keep_layers->excludes(max_inc);
  app.add_option("--out", f->out,
                 "output directory (default: indexcache-calibrate); a new, empty or earlier calibrate directory");
  app.add_flag("--resume", f->resume, "continue the search saved in OUT/state.json");
  app.add_flag("--force", f->force,
               "write into an existing non-empty directory not made by calibrate (its same-named files are replaced)");
  app.add_flag("--naive", f->naive, "score every candidate with a full forward (slow; for comparison)");
  app.add_option("--stop-after-steps", f->stop_after_steps)->check(integer_in(0, 1000000))->group("");  // tests: simulate an interruption
  return [f] { return run_calibrate(*f); };
}

}  // namespace indexcache::cli
