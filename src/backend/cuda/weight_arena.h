// One growing, contiguous range of device memory for placed weights: a virtual address range the
// size of the GPU's memory is reserved once, and physical memory is mapped into it (CUDA virtual
// memory management) as the bump pointer advances. Weights placed one after another therefore lie
// one after another, so the per-expert weights of a MoE layer, placed in order, already form the
// [experts, rows, cols] layout the grouped GEMM reads, with no packed copy. Nothing is freed before
// the arena is destroyed. No CUDA types here.
//
// The driver entry points come through the runtime (cudaGetDriverEntryPointByVersion), so nothing
// links libcuda directly. Where virtual memory management is unavailable (or
// INDEXCACHE_CUDA_NO_ARENA is set), ok() is false and the backend allocates each weight on its own.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

namespace indexcache::cuda {

class WeightArena {
 public:
  explicit WeightArena(int device);
  ~WeightArena();
  WeightArena(const WeightArena&) = delete;
  WeightArena& operator=(const WeightArena&) = delete;

  bool ok() const;
  // Why the arena is not in use ("" when it is).
  const std::string& unavailable_reason() const;
  // `bytes` of device memory, 256-byte aligned, right after the previous piece (when the alignment
  // allows). Throws indexcache::Error (kRuntime) "out of device memory: ..." when the physical
  // memory cannot be mapped; nullptr when the reserved range is exhausted (the caller falls back).
  void* take(size_t bytes);
  // Physical bytes mapped so far.
  size_t mapped_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Throws Error(kRuntime) "out of device memory: needs X GiB, Y GiB free" for a request of `bytes`
// on the current device (clears the pending CUDA error of the failed allocation).
[[noreturn]] void throw_out_of_device_memory(size_t bytes);

}  // namespace indexcache::cuda
