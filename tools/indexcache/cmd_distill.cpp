// `indexcache distill`: trains the F layers' indexers of a plan to serve the S layers after them
// (the multi-layer distillation of the IndexCache paper; the model frozen), and writes the result
// as a Hugging Face directory with no S-layer indexers and the plan in its config.json.
#include <fmt/core.h>

#include <chrono>
#include <filesystem>
#include <optional>

#include "commands.h"
#include "flags.h"
#include "indexcache/dataset.h"
#include "indexcache/distill.h"
#include "indexcache/error.h"
#include "indexcache/model.h"
#include "indexcache/output_dir.h"
#include "indexcache/progress.h"
#include "indexcache/report.h"

namespace indexcache::cli {

namespace {

struct DistillFlags {
  DeviceFlags device;
  std::string model, plan, out, stage = "dense", loss = "multi";
  std::vector<std::string> data;
  int ctx = 0, max_windows = 0, steps = 100, query_block = 64, save_every = 10;
  double lr = 1e-3, weight_decay = 0.0, clip = 1.0;
  bool force = false, resume = false;
};

constexpr const char* kStateFile = "distill_state.safetensors";

// What a resumed run must share with the one that wrote its state: the model, the plan, every
// training option and the data (FNV-1a over the windows' ids).
std::string fingerprint(const std::string& dir, const IndexPlan& plan, const DistillFlags& f, int ctx,
                        const std::vector<std::vector<int32_t>>& windows) {
  uint64_t h = 1469598103934665603ull;
  for (const auto& w : windows) {
    for (int32_t id : w) h = (h ^ static_cast<uint32_t>(id)) * 1099511628211ull;
    h = (h ^ 0xFFFFFFFFu) * 1099511628211ull;  // window boundary
  }
  std::error_code ec;
  const std::string model = std::filesystem::weakly_canonical(dir, ec).string();
  return fmt::format("model={} plan={} stage={} loss={} steps={} lr={} wd={} clip={} qb={} ctx={} windows={} data={:016x}",
                     model, plan.pattern(), f.stage, f.loss, f.steps, f.lr, f.weight_decay, f.clip, f.query_block, ctx,
                     windows.size(), h);
}

int run_distill(const DistillFlags& f) {
  const std::string dir = resolve_model_dir(f.model);
  const ModelSpec spec = load_model_spec(dir);
  const IndexPlan plan = IndexPlan::parse(f.plan, spec);
  // Checked and claimed now, before the training (never the model's or a user's directory).
  const OutputDir out = OutputDir::open(f.out, {.command = "distill", .force = f.force, .model_dir = dir, .adoptable = {}});

  DistillOptions o;
  o.steps = f.steps;
  o.lr = f.lr;
  o.weight_decay = f.weight_decay;
  o.clip = f.clip;
  o.query_block = f.query_block;
  o.stage = f.stage == "sparse" ? DistillStage::kSparse : f.stage == "both" ? DistillStage::kBoth : DistillStage::kDense;
  o.target = f.loss == "single" ? DistillTarget::kSingle : DistillTarget::kMulti;

  const int ctx = resolve_ctx(f.ctx, spec.max_position_embeddings, 1024);
  const auto files = load_model_data(dir, f.data, DataUse::kDistill, embedded_data_dir(INDEXCACHE_DEFAULT_MODEL),
                                     {.ctx = ctx, .max_windows = f.max_windows, .vocab_size = spec.vocab_size});
  std::vector<std::vector<int32_t>> windows;
  for (const auto& d : files) windows.insert(windows.end(), d.windows.begin(), d.windows.end());
  if (windows.empty()) throw_bad_input("--data", "no LM windows of --ctx tokens in the data");

  o.fingerprint = fingerprint(dir, plan, f, ctx, windows);
  std::optional<DistillState> resumed;
  if (f.resume) {
    const std::string path = out.file(kStateFile);
    if (!std::filesystem::is_regular_file(path))
      throw_bad_input("--resume", "no " + std::string(kStateFile) + " in " + quote_for_message(f.out) + " to resume from");
    resumed = read_distill_state(path);
    if (resumed->fingerprint != o.fingerprint)
      throw_bad_input("--resume", "the state in " + quote_for_message(f.out) +
                                      " was written with other settings (model, plan, data or options)");
    o.resume = &*resumed;
  }
  o.state_every = f.save_every;
  o.on_state = [&out](const DistillState& st) { write_distill_state(out.file(kStateFile), st); };

  LoadOptions lo;
  lo.require_indexer.assign(spec.num_layers, false);
  for (int l = 0; l < spec.num_layers; ++l) lo.require_indexer[l] = plan.is_full(l);
  auto model = Model::load(dir, lo);
  auto backend = open_backend(f.device, *model);

  fmt::print("model  {} ({}, {} layers, index_topk {})\n", dir, spec.model_type, spec.num_layers, spec.index_topk);
  fmt::print("plan   {} ({} F layers), stage {}, loss {}, {} steps, lr {}\n", plan.pattern(), plan.num_full(),
             f.stage, f.loss, f.steps, f.lr);
  fmt::print("data   {} windows of up to {} tokens\n", windows.size(), ctx);
  if (resumed) fmt::print("resume from step {} of {}\n", resumed->step, f.steps);
  Progress progress;
  const auto t0 = std::chrono::steady_clock::now();
  double first = 0;
  const DistillResult r = distill_indexers(*model, *backend, plan, windows, o, [&](const DistillStep& s) {
    if (first == 0) first = resumed && !resumed->steps.empty() ? resumed->steps.front().loss : s.loss;
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    progress.update(fmt::format("distill: step {}/{} | loss {:.5f} (step 1: {:.5f}) | grad norm {:.3g} | elapsed {} | ETA {}",
                                s.step, f.steps, s.loss, first, s.grad_norm, report::format_duration(el),
                                report::format_duration(el / s.step * (f.steps - s.step))));
  });
  progress.done();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  write_distilled_checkpoint(*model, plan, r, out.path());

  report::ordered_json j;
  j["model"] = dir;
  j["plan"] = plan.pattern();
  j["stage"] = f.stage;
  j["loss"] = f.loss;
  j["steps"] = f.steps;
  j["lr"] = f.lr;
  j["ctx"] = ctx;
  j["windows"] = windows.size();
  j["seconds"] = seconds;
  j["curve"] = report::ordered_json::array();
  for (const auto& s : r.steps)
    j["curve"].push_back({{"step", s.step}, {"window", s.window}, {"sparse", s.sparse}, {"loss", s.loss},
                          {"grad_norm", s.grad_norm}});
  out.write("report.json", j.dump(1) + "\n");
  out.write("loss_curve.svg", distill_curve_svg(r, "indexcache distill: " + plan.pattern() + ", stage " + f.stage +
                                                       ", loss " + f.loss));
  fmt::print("loss   {:.5f} -> {:.5f} (summed over F layers, per token)\n", r.steps.front().loss, r.steps.back().loss);
  fmt::print("wrote  {} (model.safetensors, config.json, report.json, loss_curve.svg) in {}\n", f.out, report::format_duration(seconds));
  return 0;
}

}  // namespace

Runner register_distill(CLI::App& app) {
  auto f = std::make_shared<DistillFlags>();
  app.add_option("-m,--model", f->model, "model directory (default: the embedded model)");
  add_device_flags(app, f->device);
  app.add_option("--plan", f->plan, "the plan to distill for: 1/N, an F/S string, a config/report JSON")
      ->required()
      ->check(non_empty());
  app.add_option("--out", f->out, "output directory (new, empty, or an earlier distill output)")
      ->required()
      ->check(non_empty());
  app.add_flag("--force", f->force, "write into an existing non-empty directory that is not an indexcache output");
  app.add_option("--data", f->data, ".txt, .jsonl or .ids training data (default: data/distill*.txt, else data/calibration*.txt)");
  app.add_option("--ctx", f->ctx, "window length in tokens (default: min(1024, max_position_embeddings))")
      ->check(integer_in(2, kMaxTokensFlag));
  app.add_option("--max-windows", f->max_windows, "windows per file (default: all)")->check(integer_in(0, kMaxCountFlag));
  app.add_option("--steps", f->steps, "optimiser steps, one window each (default 100)")->check(integer_in(1, 1 << 24));
  app.add_option("--lr", f->lr, "AdamW learning rate (default 1e-3)")->check(CLI::Range(1e-12, 10.0));
  app.add_option("--weight-decay", f->weight_decay, "AdamW decoupled weight decay (default 0)")->check(CLI::Range(0.0, 1.0));
  app.add_option("--clip", f->clip, "global gradient-norm clip, 0: none (default 1)")->check(CLI::Range(0.0, 1e6));
  app.add_option("--stage", f->stage, "dense, sparse (KL over the selected set) or both (dense, then sparse)")
      ->check(CLI::IsMember({"dense", "sparse", "both"}));
  app.add_option("--loss", f->loss, "multi (the served layers' mean, default) or single (the F layer alone)")
      ->check(CLI::IsMember({"multi", "single"}));
  app.add_flag("--resume", f->resume, "continue the run whose state (" + std::string(kStateFile) + ") is in --out");
  app.add_option("--save-every", f->save_every, "write the state every N steps and after the last (0: never; default 10)")
      ->check(integer_in(0, 1 << 24));
  app.add_option("--query-block", f->query_block, "queries per block (bounds memory; default 64)")
      ->check(integer_in(1, 1 << 16));
  return [f] { return run_distill(*f); };
}

}  // namespace indexcache::cli
