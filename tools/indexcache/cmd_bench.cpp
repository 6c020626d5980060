// `indexcache bench`: prefill / decode speed of a synthetic model with real shapes, per context x
// IndexCache plan, on the CPU or (CUDA builds) the GPU. The flags are parsed by src/bench, so this
// only hands the arguments over.
#include "bench/bench_run.h"
#include "commands.h"

namespace indexcache::cli {

Runner register_bench(CLI::App& app) {
  app.prefix_command();  // every argument after `bench` goes to the bench parser, in order
  app.set_help_flag();   // --help included
  return [&app] { return bench::bench_main(app.remaining()); };
}

}  // namespace indexcache::cli
