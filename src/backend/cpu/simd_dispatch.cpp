#include "backend/cpu/simd_dispatch.h"

namespace indexcache::cpu {

#if INDEXCACHE_CPU_DISPATCH
namespace {
// Three versions of one function for the targets of INDEXCACHE_CPU_KERNEL: GCC picks among them
// with the same dispatcher (same checks, same priorities) as among the kernels' clones.
__attribute__((target("arch=x86-64-v4"))) const char* clone_name() { return "x86-64-v4"; }
__attribute__((target("arch=x86-64-v3"))) const char* clone_name() { return "x86-64-v3"; }
__attribute__((target("default"))) const char* clone_name() { return "x86-64"; }
}  // namespace
const char* kernel_target() { return clone_name(); }
#elif defined(INDEXCACHE_NATIVE)
const char* kernel_target() { return "native"; }
#else
const char* kernel_target() { return "built-in"; }
#endif

}  // namespace indexcache::cpu
