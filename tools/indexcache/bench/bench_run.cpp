#include "bench/bench_run.h"

#include <cstdio>
#include <fstream>

#include "indexcache/error.h"

namespace indexcache::bench {

int bench_main(const BenchOptions& opts) {
  const BenchSetup setup = resolve_bench(opts);
  Progress progress(opts.quiet ? nullptr : stderr, 10.0, "[bench] ");
  const BenchReport report = opts.calibrate                            ? run_calibrate_bench(setup, progress)
                             : opts.serve                          ? run_serve_bench(setup, progress)
                             : opts.device.kind == DeviceKind::kCuda ? run_gpu_bench(setup, progress)
                                                                     : run_cpu_bench(setup, progress);
  const std::string json = format_json(report);
  if (!opts.json_out.empty()) {
    std::ofstream f(opts.json_out, std::ios::binary);
    f << json;
    f.close();
    if (!f) throw_runtime(opts.json_out, "cannot write the JSON report");
  }
  const std::string text = opts.json ? json : format_markdown(report);
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
  return 0;
}

}  // namespace indexcache::bench
