// `indexcache overlap`: every layer's own top-k selection on calibration data (all layers F), and
// the cross-layer overlap matrix, written as JSON, CSV and an SVG heatmap.
#include <fmt/core.h>

#include <chrono>

#include "indexcache/report.h"
#include "indexcache/progress.h"
#include "commands.h"
#include "flags.h"
#include "indexcache/dataset.h"
#include "indexcache/error.h"
#include "indexcache/model.h"
#include "indexcache/output_dir.h"

namespace indexcache::cli {

namespace {

struct OverlapFlags {
  DeviceFlags device;
  std::string model, out = "indexcache-overlap";
  std::vector<std::string> data;
  int ctx = 0, max_windows = 4;
  bool force = false;
};

int run_overlap(const OverlapFlags& f) {
  if (f.max_windows < 0) throw_bad_input("--max-windows", "must be >= 0");
  const std::string dir = resolve_model_dir(f.model);
  const ModelSpec spec = load_model_spec(dir);
  const int ctx = resolve_ctx(f.ctx, spec.max_position_embeddings, 1024);
  // The output directory is checked and claimed before anything is loaded or computed.
  const OutputDir out = OutputDir::open(f.out, {.command = "overlap", .force = f.force, .model_dir = dir, .adoptable = {}});
  const auto files = load_model_data(dir, f.data, DataUse::kCalibration, embedded_data_dir(INDEXCACHE_DEFAULT_MODEL),
                                     {.ctx = ctx, .max_windows = f.max_windows, .max_items = 0, .vocab_size = spec.vocab_size});
  const auto windows = all_windows(files);
  if (windows.empty()) throw_bad_input("--data", "no text windows (retrieval items are not used)");

  LoadOptions lo;
  lo.require_indexer.assign(spec.num_layers, true);
  auto model = Model::load(dir, lo);
  auto backend = open_backend(f.device, *model);
  Progress progress;
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = report::overlap_on(*model, windows, *backend, [&](int done, int total) {
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    progress.update(fmt::format("overlap: window {}/{} | elapsed {} | ETA {}", done, total, report::format_duration(el),
                                report::format_duration(el / done * (total - done))));
  });
  progress.done();

  const auto data = report::summarize(files);
  const std::string json_path = out.file("overlap.json"), csv_path = out.file("overlap.csv"),
                    svg_path = out.file("overlap.svg");
  out.write("overlap.json", report::overlap_json(r, dir, data).dump(2) + "\n");
  out.write("overlap.csv", report::overlap_csv(r));
  out.write("overlap.svg", report::overlap_svg(r, fmt::format("Cross-layer top-k overlap ({}, k = {}, {} queries)",
                                                                  spec.model_type, r.k, r.queries)));

  fmt::print("model     {} ({}, {} layers, index_topk {})\n", dir, spec.model_type, spec.num_layers, spec.index_topk);
  fmt::print("data      {} windows, {} tokens (ctx {}); {} queries with more than k = {} candidates\n", r.windows,
             r.tokens, ctx, r.queries, r.k);
  if (r.queries == 0)
    fmt::print("warning   no query had more than k candidates: use longer windows (--ctx > {})\n", r.k);
  fmt::print("adjacent  ");
  for (size_t i = 0; i + 1 < r.matrix.size(); ++i) fmt::print("{}L{}-L{} {:.3f}", i ? ", " : "", i, i + 1, r.matrix[i][i + 1]);
  fmt::print("\n");
  if (r.matrix.size() <= 16) {
    fmt::print("matrix    mean |T_i ∩ T_j| / k\n      ");
    for (size_t j = 0; j < r.matrix.size(); ++j) fmt::print(" {:>5}", fmt::format("L{}", j));
    fmt::print("\n");
    for (size_t i = 0; i < r.matrix.size(); ++i) {
      fmt::print("  {:>4}", fmt::format("L{}", i));
      for (double v : r.matrix[i]) fmt::print(" {:>5.3f}", v);
      fmt::print("\n");
    }
  }
  fmt::print("wrote     {}, {}, {}\n", json_path, csv_path, svg_path);
  return 0;
}

}  // namespace

Runner register_overlap(CLI::App& app) {
  auto f = std::make_shared<OverlapFlags>();
  app.add_option("-m,--model", f->model, "model directory (default: the embedded model)");
  add_device_flags(app, f->device);
  app.add_option("--data", f->data, "data files: .txt, .jsonl ({\"text\"}, {\"ids\"} or chat {\"messages\"} lines) or .ids (default: data/calibration.txt)");
  app.add_option("--ctx", f->ctx, "window length in tokens (default: min(1024, max_position_embeddings))")
      ->check(integer_in(2, kMaxTokensFlag));
  app.add_option("--max-windows", f->max_windows, "windows per data file (default 4; 0: all)")
      ->check(integer_in(0, kMaxCountFlag));
  app.add_option("--out", f->out,
                 "output directory (default: indexcache-overlap); a new, empty or earlier overlap directory");
  app.add_flag("--force", f->force,
               "write into an existing non-empty directory not made by overlap (its same-named files are replaced)");
  return [f] { return run_overlap(*f); };
}

}  // namespace indexcache::cli
