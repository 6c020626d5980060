// `indexcache bench` end to end: arguments -> setup -> the matrix ctx x plan x mode on the chosen
// device -> markdown / JSON. The CLI's `bench` command calls bench_main().
#pragma once

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_options.h"
#include "bench/bench_report.h"

namespace indexcache {
class Backend;
}

namespace indexcache::bench {

using Progress = std::function<void(const std::string&)>;

// Parses `args` (everything after `bench`), runs, prints the report on stdout (and --json-out).
// Returns the exit code (0); bad input and failures throw indexcache::Error.
int bench_main(const std::vector<std::string>& args);

// The report fields that come from the setup alone (preset, shapes, run settings, commit, date).
BenchReport report_skeleton(const BenchSetup& setup);

// The two device paths. The CPU one lives in the library (cpu_bench.cpp); the CUDA one is built
// only where INDEXCACHE_HAVE_CUDA is defined (bench_gpu.cpp).
BenchReport run_cpu_bench(const BenchSetup& setup, const Progress& progress);
// The one Session on `be` over random weights of the preset (Model::synthetic), timed over
// ctx x plan x mode, filling `r` (its machine facts already set); op classes when profile_ops
// (each op synchronises, so leave it off where that costs time: CUDA).
BenchReport run_session_bench(const BenchSetup& setup, const Progress& progress, Backend& be, BenchReport r,
                              bool profile_ops);
BenchReport run_gpu_bench(const BenchSetup& setup, const Progress& progress);

// The run whose wall time is the median of `runs` (the lower middle for an even count), so that
// its per-class breakdown belongs to the time reported.
inline PhaseStats median_run(std::vector<PhaseStats> runs) {
  std::sort(runs.begin(), runs.end(), [](const PhaseStats& a, const PhaseStats& b) { return a.seconds < b.seconds; });
  return runs[(runs.size() - 1) / 2];
}

}  // namespace indexcache::bench
