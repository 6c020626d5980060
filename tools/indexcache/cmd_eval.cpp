// `indexcache eval`: per-token LM loss and perplexity on text / token-id data, and greedy retrieval
// accuracy on {"prompt", "answer"} sets; several plans side by side on the same windows and items.
#include <fmt/core.h>

#include <chrono>

#include "indexcache/report.h"
#include "indexcache/progress.h"
#include "commands.h"
#include "flags.h"
#include "indexcache/dataset.h"
#include "indexcache/error.h"
#include "indexcache/model.h"

namespace indexcache::cli {

namespace {

struct EvalFlags {
  DeviceFlags device;
  std::string model;
  std::vector<std::string> data, plans;
  int ctx = 0, max_windows = 16, max_items = 0;
  bool json = false;
};

int run_eval(const EvalFlags& f) {
  if (f.max_windows < 0) throw_bad_input("--max-windows", "must be >= 0");
  if (f.max_items < 0) throw_bad_input("--max-items", "must be >= 0");
  const std::string dir = resolve_model_dir(f.model);
  const ModelSpec spec = load_model_spec(dir);
  std::vector<report::NamedPlan> plans;
  if (f.plans.empty()) plans.push_back({"config", IndexPlan::from_config(spec, dir + "/config.json")});
  for (const auto& p : f.plans) plans.push_back({p, IndexPlan::parse(p, spec)});

  const int ctx = resolve_ctx(f.ctx, spec.max_position_embeddings, 1024);
  const auto files = load_model_data(dir, f.data, DataUse::kEval, embedded_data_dir(INDEXCACHE_DEFAULT_MODEL),
                                     {.ctx = ctx, .max_windows = f.max_windows, .max_items = f.max_items,
                                      .vocab_size = spec.vocab_size});

  LoadOptions lo;
  lo.require_indexer.assign(spec.num_layers, false);
  for (const auto& p : plans)
    for (int l = 0; l < spec.num_layers; ++l) lo.require_indexer[l] = lo.require_indexer[l] || p.plan.is_full(l);
  lo.only_required_indexers = true;
  auto model = Model::load(dir, lo);
  auto backend = open_backend(f.device, *model);

  Progress progress;
  const auto t0 = std::chrono::steady_clock::now();
  const auto results = report::evaluate_plans(*model, plans, files, *backend, [&](int done, int total) {
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    progress.update(fmt::format("eval: {}/{} windows and items | elapsed {} | ETA {}", done, total,
                                report::format_duration(el), report::format_duration(el / done * (total - done))));
  });
  progress.done();

  if (f.json) {
    fmt::print("{}\n", report::eval_json(results, dir, ctx).dump(2));
    return 0;
  }
  fmt::print("model  {} ({}, {} layers, index_topk {})\n", dir, spec.model_type, spec.num_layers, spec.index_topk);
  for (const auto& d : files) {
    std::string what;
    if (!d.windows.empty()) what = fmt::format("{} windows of up to {} tokens ({} tokens)", d.windows.size(), ctx, d.window_tokens());
    if (!d.items.empty()) what += fmt::format("{}{} retrieval items", what.empty() ? "" : ", ", d.items.size());
    fmt::print("data   {}: {}\n", d.path, what);
  }
  fmt::print("{}", report::eval_text(results));
  fmt::print("time   {}\n", report::format_duration(results.seconds));
  return 0;
}

}  // namespace

Runner register_eval(CLI::App& app) {
  auto f = std::make_shared<EvalFlags>();
  app.add_option("-m,--model", f->model, "model directory (default: the embedded model)");
  add_device_flags(app, f->device);
  app.add_option("--data", f->data,
                 ".txt, .jsonl ({\"text\"} or {\"prompt\",\"answer\"} lines) or .ids files "
                 "(default: data/heldout*.txt and data/retrieval*.jsonl)");
  app.add_option("--plan", f->plans, "plans to compare (repeatable): full, 1/N, an F/S string, a config/report JSON "
                                     "(default: the config's)")
      ->check(non_empty());
  app.add_option("--ctx", f->ctx, "LM window length in tokens (default: min(1024, max_position_embeddings))")
      ->check(integer_in(2, kMaxTokensFlag));
  app.add_option("--max-windows", f->max_windows, "LM windows per file (default 16; 0: all)")
      ->check(integer_in(0, kMaxCountFlag));
  app.add_option("--max-items", f->max_items, "retrieval items per file (default: all)")
      ->check(integer_in(0, kMaxCountFlag));
  app.add_flag("--json", f->json, "print the results as JSON");
  return [f] { return run_eval(*f); };
}

}  // namespace indexcache::cli
