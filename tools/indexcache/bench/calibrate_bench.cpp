// `indexcache bench --mode calibrate`: the greedy IndexCache search (calibrate()) timed on the
// preset's model with random weights (Model::synthetic) and random token windows, on the Session of
// --device (the CPU backend, or the CUDA backend: never the GPU runner). Reports the seconds of
// each step, the layer-forwards against the naive search's, the plan found and the memory in use.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>

#include "backend/backend.h"
#include "bench/bench_run.h"
#include "indexcache/calibrate.h"
#include "indexcache/device.h"
#include "indexcache/error.h"
#include "indexcache/model.h"

namespace indexcache::bench {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

int64_t host_peak_rss_bytes() {
  rusage u{};
  if (getrusage(RUSAGE_SELF, &u) != 0) return 0;
  return static_cast<int64_t>(u.ru_maxrss) * 1024;  // KiB on Linux
}

// Host bytes the search needs on the CPU at its peak: the CPU run of one whole window (one chunk),
// all logits of a window, and three traces (base, candidate, best candidate): per layer and window
// the hidden state entering it and its selections.
double cpu_calibrate_bytes(const ModelSpec& s, int64_t ctx, int windows) {
  double b = cpu_bytes_needed(s, ctx, ctx);
  b += static_cast<double>(ctx) * s.vocab_size * 4.0;
  b += 3.0 * windows * s.num_layers * static_cast<double>(ctx) * (s.hidden_size + s.index_topk) *
       4.0;
  return b;
}

std::string seconds_str(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g s", s);
  return buf;
}

}  // namespace

BenchReport run_calibrate_bench(const BenchSetup& setup, Progress& progress) {
  const BenchOptions& o = setup.options;
  const ModelSpec& spec = setup.preset.spec;
  const int64_t ctx = o.ctx.front();
  const bool cuda = o.device.kind == DeviceKind::kCuda;
  if (!cuda) check_cpu_fits(setup, cpu_calibrate_bytes(spec, ctx, o.windows));

  BenchReport r = report_skeleton(setup);
  const std::shared_ptr<Backend> be = make_backend(o.device);  // one-line errors for a missing GPU
  r.machine = cuda ? cuda_machine_info(o.device.gpu) : cpu_machine_info();

  progress.note("generating " + setup.preset.name + " with random bf16 weights (" +
           format_bytes(static_cast<double>(parameter_count(spec)) * 2) +
           " in host memory)");
  const auto model = Model::synthetic(spec, o.seed);

  std::mt19937_64 rng(o.seed ^ 0xC2B2AE3D27D4EB4Full);
  std::uniform_int_distribution<int32_t> tok(0, spec.vocab_size - 1);
  std::vector<std::vector<int32_t>> windows(static_cast<size_t>(o.windows),
                                            std::vector<int32_t>(static_cast<size_t>(ctx)));
  for (auto& w : windows)
    for (auto& v : w) v = tok(rng);

  // Memory in use, sampled after each candidate (the search's Session, caches and traces alive).
  int64_t in_use_peak = 0;
  std::optional<int64_t> gpu_peak;
  auto sample_memory = [&] {
    in_use_peak = std::max(in_use_peak, static_cast<int64_t>(be->bytes_in_use()));
    if (cuda)
      if (const auto used = cuda_used_bytes()) gpu_peak = std::max(gpu_peak.value_or(0), *used);
  };

  CalibrateOptions opt;
  opt.stop.keep_layers = setup.keep_layers;
  const int total_steps = std::max(0, spec.num_layers - setup.keep_layers);
  opt.on_step = [&](const CalibrationState& s) {
    const CalibrationStep& st = s.steps.back();
    char line[160];
    std::snprintf(line, sizeof line, "step %zu/%d: layer %d -> S, loss %.5f, ", s.steps.size(),
                  total_steps, st.flipped, st.loss);
    progress.note(line + seconds_str(st.seconds));
  };
  auto last_note = Clock::now();
  opt.on_progress = [&](const CalibrateProgress& p) {
    sample_memory();
    if (seconds_since(last_note) < 10) return;  // a line every 10 s at most within a step
    last_note = Clock::now();
    progress.note("step " + std::to_string(p.step) + "/" + std::to_string(p.total_steps) +
             ", candidate " + std::to_string(p.candidate) + "/" + std::to_string(p.candidates) +
             ", elapsed " + seconds_str(p.elapsed_seconds) + ", ETA " + seconds_str(p.eta_seconds));
  };
  progress.note("calibrate: " + std::to_string(o.windows) + " windows x " + std::to_string(ctx) +
           " tokens, " + std::to_string(spec.num_layers) + " layers, stop at " +
           std::to_string(setup.keep_layers) + " F layers, on " + device_name(o.device));

  const auto t0 = Clock::now();
  const CalibrationState state = calibrate(*model, windows, *be, opt);
  be->sync();
  sample_memory();

  CalibrateResult c;
  c.seconds = seconds_since(t0);
  c.backend = device_name(o.device);
  c.ctx = ctx;
  c.windows = o.windows;
  c.keep_layers = setup.keep_layers;
  c.full_loss = state.full_loss;
  for (const auto& st : state.steps) c.steps.push_back({st.flipped, st.loss, st.plan, st.seconds});
  c.plan = state.plan();
  c.stop_reason = state.stop_reason;
  c.layer_forwards = state.layer_forwards;
  c.naive_layer_forwards = state.naive_layer_forwards;
  c.device_bytes_in_use = static_cast<int64_t>(be->bytes_in_use());
  c.device_bytes_in_use_peak = in_use_peak;
  c.gpu_used_peak = gpu_peak;
  c.host_peak_rss_bytes = host_peak_rss_bytes();
  r.calibrate = std::move(c);
  return r;
}

}  // namespace indexcache::bench
