// `indexcache bench` end to end: options -> setup -> the matrix ctx x plan x mode (or the calibrate
// search) on the chosen device -> markdown / JSON. The CLI's `bench` command (cmd_bench.cpp)
// parses the flags and calls bench_main().
#pragma once

#include <algorithm>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "bench/bench_options.h"
#include "bench/bench_report.h"
#include "indexcache/progress.h"

namespace indexcache {
class Backend;
}

namespace indexcache::bench {

// Resolves `options`, runs, prints the report on stdout (and --json-out). Returns the exit code
// (0); bad input and failures throw indexcache::Error.
int bench_main(const BenchOptions& options);

// The report fields that come from the setup alone (preset, shapes, run settings, commit, date).
BenchReport report_skeleton(const BenchSetup& setup);

// The two device paths. The CPU one lives in the library (cpu_bench.cpp); the CUDA one is built
// only where INDEXCACHE_HAVE_CUDA is defined (bench_gpu.cpp).
BenchReport run_cpu_bench(const BenchSetup& setup, Progress& progress);
// The one Session on `be` over random weights of the preset (Model::synthetic), timed over
// ctx x plan x mode, filling `r` (its machine facts already set); op classes when profile_ops
// (each op synchronises, so leave it off where that costs time: CUDA).
BenchReport run_session_bench(const BenchSetup& setup, Progress& progress, Backend& be, BenchReport r,
                              bool profile_ops);
BenchReport run_gpu_bench(const BenchSetup& setup, Progress& progress);
// --mode calibrate: the greedy search (calibrate()) on random weights of the preset and random
// token windows, on the Session of the options' device (calibrate_bench.cpp).
BenchReport run_calibrate_bench(const BenchSetup& setup, Progress& progress);
// --mode serve: concurrent clients through the Scheduler on the CPU (serve_bench.cpp).
BenchReport run_serve_bench(const BenchSetup& setup, Progress& progress);

// The machine facts of the report: the CPU's (model name, OpenMP threads now, RAM) and the CUDA
// device `gpu`'s (name, SMs, memory, driver; a one-line error in a build without CUDA).
MachineInfo cpu_machine_info();
MachineInfo cuda_machine_info(int gpu);
// Device memory in use on the current CUDA device (total - free), or nothing without CUDA.
std::optional<int64_t> cuda_used_bytes();

// Bytes a CPU run of `spec` needs at its peak for requests of up to `max_ctx` tokens prefilled in
// chunks of `chunk`; check_cpu_fits() throws a one-line error naming the preset above the CPU limit.
double cpu_bytes_needed(const ModelSpec& spec, int64_t max_ctx, int64_t chunk);
void check_cpu_fits(const BenchSetup& setup, double bytes_needed);

// The run whose wall time is the median of `runs` (the lower middle for an even count), so that
// its per-class breakdown belongs to the time reported.
inline PhaseStats median_run(std::vector<PhaseStats> runs) {
  std::sort(runs.begin(), runs.end(), [](const PhaseStats& a, const PhaseStats& b) { return a.seconds < b.seconds; });
  return runs[(runs.size() - 1) / 2];
}

}  // namespace indexcache::bench
