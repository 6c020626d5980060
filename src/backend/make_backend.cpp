// make_backend(Device): the one place a Device becomes a backend. Built into the indexcache_device
// library, which links the CUDA backend where the build has one.
#include <unistd.h>

#include <string>

#include "backend/backend.h"
#include "indexcache/device.h"
#include "indexcache/error.h"
#ifdef INDEXCACHE_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace indexcache {

DeviceKind parse_device_kind(const std::string& s) {
  if (s == "cpu") return DeviceKind::kCpu;
  if (s == "cuda") return DeviceKind::kCuda;
  throw_bad_input("--device " + s, "unknown device (cpu or cuda)");
}

std::string device_name(const Device& d) {
  if (d.kind == DeviceKind::kCpu) return "cpu";
  return "cuda:" + std::to_string(d.gpu) + (d.precision == Precision::kF32 ? " (f32)" : "");
}

std::shared_ptr<Backend> make_backend(const Device& d) {
  if (d.threads < 0) throw_bad_input("--threads " + std::to_string(d.threads), "must be >= 0");
  if (d.kind == DeviceKind::kCpu) return make_cpu_backend(d.threads);
  if (d.gpu < 0) throw_bad_input("--gpu " + std::to_string(d.gpu), "must be >= 0");
#ifdef INDEXCACHE_HAVE_CUDA
  return make_cuda_backend(d.gpu, d.precision);
#else
  throw_runtime("--device cuda", "this build of indexcache has no CUDA backend (nvcc was not found at build time)");
#endif
}

DeviceMemory device_memory(const Device& d) {
  if (d.kind == DeviceKind::kCpu) {
    const int64_t page = sysconf(_SC_PAGESIZE);
    return {page * static_cast<int64_t>(sysconf(_SC_AVPHYS_PAGES)), page * static_cast<int64_t>(sysconf(_SC_PHYS_PAGES))};
  }
  if (d.gpu < 0) throw_bad_input("--gpu " + std::to_string(d.gpu), "must be >= 0");
#ifdef INDEXCACHE_HAVE_CUDA
  return cuda_device_memory(d.gpu);
#else
  throw_runtime("--device cuda", "this build of indexcache has no CUDA backend (nvcc was not found at build time)");
#endif
}

}  // namespace indexcache
