// Where a model runs: the CPU (f32, the exact reference) or one CUDA GPU (bf16 weights and
// activations with f32 accumulation and an f32 residual, or f32 throughout for parity checks).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace indexcache {

class Backend;

enum class DeviceKind { kCpu, kCuda };
enum class Precision { kBf16, kF32 };

struct Device {
  DeviceKind kind = DeviceKind::kCpu;
  int gpu = 0;                           // CUDA device ordinal
  int threads = 0;                       // CPU threads (0: OpenMP's default)
  Precision precision = Precision::kBf16;  // CUDA only; the CPU is always f32
};

// "cpu" or "cuda"; throws Error(kBadInput) otherwise.
DeviceKind parse_device_kind(const std::string& s);
std::string device_name(const Device& d);  // "cpu", "cuda:0", "cuda:0 (f32)"

// The backend for `d`. Throws Error(kRuntime) with a one-line reason when it cannot be made
// (a build without CUDA, no CUDA device, a GPU ordinal that does not exist).
std::shared_ptr<Backend> make_backend(const Device& d);

struct DeviceMemory {
  int64_t free_bytes = 0, total_bytes = 0;
};
// The memory `d` runs in: the GPU's (free and total), or the host's physical memory (available
// and total). Throws like make_backend for a device that cannot be used.
DeviceMemory device_memory(const Device& d);

}  // namespace indexcache
