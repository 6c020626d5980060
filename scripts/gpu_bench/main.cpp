// main() of the self-contained GPU bench binary: `indexcache_bench ARGS` is
// `indexcache bench ARGS` of a CUDA build (GPU path only), with the same exit codes and
// one-line errors.
#include <cstdio>
#include <new>
#include <string>
#include <vector>

#include "bench/bench_run.h"
#include "indexcache/error.h"

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  try {
    return indexcache::bench::bench_main(args);
  } catch (const indexcache::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return e.exit_code();
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: internal: %s\n", e.what());
    return 1;
  }
}
