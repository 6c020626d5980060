// Run-time dispatch of the CPU kernels. The project is built for plain x86-64, so the binary runs
// on any x86-64 CPU; each kernel entry point marked INDEXCACHE_CPU_KERNEL is compiled three times,
// for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and plain x86-64, and the loader picks the best
// one the CPU supports (GCC target_clones: an ifunc, resolved once at start-up; the OpenMP regions
// of a marked function are cloned with it). A helper that a kernel calls is part of each clone
// only where it is inlined, and GCC inlines less across targets than within one: a helper that
// does real work is [[gnu::always_inline]], or marked itself if it has an OpenMP region of its own
// (otherwise it is compiled for plain x86-64 alone: no FMA, other bits, slower).
//
// Results: the v4 and v3 clones both contract a * b + c into one FMA and neither reassociates, so
// they give the same bits; the x86-64 clone has no FMA and may differ from them in the last bits.
//
// The mark is empty (the kernels compiled once, for the build's target) off x86-64, with
// INDEXCACHE_NATIVE (-march=native), and with Clang, whose target_clones resolver (Clang 14) does
// not check x86-64-v3 / v4.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(INDEXCACHE_NATIVE)
#define INDEXCACHE_CPU_KERNEL \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define INDEXCACHE_CPU_DISPATCH 1
// The kernels' 32-byte vector helpers (v8f) are file-local and inlined into the clones; GCC's note
// that passing such a vector without AVX changes the ABI does not concern them.
#pragma GCC diagnostic ignored "-Wpsabi"
#else
#define INDEXCACHE_CPU_KERNEL
#define INDEXCACHE_CPU_DISPATCH 0
#endif

namespace indexcache::cpu {

// The clone of the kernels that runs on this CPU, chosen by the same resolver: "x86-64-v4",
// "x86-64-v3" or "x86-64"; "native" or "built-in" where the kernels are compiled once.
const char* kernel_target();

}  // namespace indexcache::cpu
