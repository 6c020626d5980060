// The placed-weight arena (see weight_arena.h): cuMemAddressReserve once, then cuMemCreate +
// cuMemMap + cuMemSetAccess of chunks (at least kChunk bytes) at the end of the mapped part.
#include "backend/cuda/weight_arena.h"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "backend/cuda/cuda_check.cuh"
#include "indexcache/error.h"

namespace indexcache::cuda {

namespace {

constexpr size_t kChunk = size_t{64} << 20;  // physical memory is mapped at least this much at a time

size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

std::string gib(size_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  return b;
}

// The driver functions the arena calls, looked up through the runtime.
struct DriverApi {
  PFN_cuMemGetAllocationGranularity_v10020 granularity = nullptr;
  PFN_cuMemAddressReserve_v10020 reserve = nullptr;
  PFN_cuMemAddressFree_v10020 address_free = nullptr;
  PFN_cuMemCreate_v10020 create = nullptr;
  PFN_cuMemRelease_v10020 release = nullptr;
  PFN_cuMemMap_v10020 map = nullptr;
  PFN_cuMemUnmap_v10020 unmap = nullptr;
  PFN_cuMemSetAccess_v10020 set_access = nullptr;
};

template <class F>
bool load(const char* name, F* f, std::string* why) {
  void* p = nullptr;
  cudaDriverEntryPointQueryResult q{};
  const cudaError_t e = cudaGetDriverEntryPointByVersion(name, &p, 12000, cudaEnableDefault, &q);
  if (e != cudaSuccess || q != cudaDriverEntryPointSuccess || p == nullptr) {
    cudaGetLastError();
    *why = std::string("driver entry point ") + name + " not found";
    return false;
  }
  *f = reinterpret_cast<F>(p);
  return true;
}

}  // namespace

void throw_out_of_device_memory(size_t bytes) {
  cudaGetLastError();  // the failed allocation's error is not sticky: clear it
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
    cudaGetLastError();
    free_b = 0;
  }
  throw_runtime("out of device memory", "needs " + gib(bytes) + ", " + gib(free_b) + " free");
}

struct WeightArena::Impl {
  struct Chunk {
    CUdeviceptr at = 0;
    size_t size = 0;
    CUmemGenericAllocationHandle handle = 0;
  };
  DriverApi api;
  CUmemAllocationProp prop{};
  size_t granularity = 0;
  CUdeviceptr base = 0;
  size_t reserved = 0, used = 0, mapped = 0;
  std::vector<Chunk> chunks;
  bool ok = false;
  std::string why;

  explicit Impl(int device) {
    if (std::getenv("INDEXCACHE_CUDA_NO_ARENA")) {
      why = "disabled by INDEXCACHE_CUDA_NO_ARENA";
      return;
    }
    if (!load("cuMemGetAllocationGranularity", &api.granularity, &why) ||
        !load("cuMemAddressReserve", &api.reserve, &why) || !load("cuMemAddressFree", &api.address_free, &why) ||
        !load("cuMemCreate", &api.create, &why) || !load("cuMemRelease", &api.release, &why) ||
        !load("cuMemMap", &api.map, &why) || !load("cuMemUnmap", &api.unmap, &why) ||
        !load("cuMemSetAccess", &api.set_access, &why))
      return;
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = device;
    if (api.granularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) != CUDA_SUCCESS || granularity == 0) {
      why = "cuMemGetAllocationGranularity failed (no virtual memory management?)";
      return;
    }
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
      cudaGetLastError();
      why = "cudaMemGetInfo failed";
      return;
    }
    reserved = round_up(total_b, granularity);
    if (api.reserve(&base, reserved, 0, 0, 0) != CUDA_SUCCESS) {
      why = "cuMemAddressReserve of " + gib(reserved) + " failed";
      base = 0;
      return;
    }
    ok = true;
  }

  ~Impl() {
    for (auto it = chunks.rbegin(); it != chunks.rend(); ++it) {
      api.unmap(it->at, it->size);
      api.release(it->handle);
    }
    if (base) api.address_free(base, reserved);
  }

  // Maps `grow` more bytes (a multiple of the granularity) at the end of the mapped part; false
  // when the physical allocation fails (out of memory).
  bool map_more(size_t grow) {
    CUmemGenericAllocationHandle h = 0;
    if (api.create(&h, grow, &prop, 0) != CUDA_SUCCESS) return false;
    const CUdeviceptr at = base + mapped;
    if (api.map(at, grow, 0, h, 0) != CUDA_SUCCESS) {
      api.release(h);
      throw_runtime("cuda weight arena", "cuMemMap failed");
    }
    CUmemAccessDesc access{};
    access.location = prop.location;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    if (api.set_access(at, grow, &access, 1) != CUDA_SUCCESS) {
      api.unmap(at, grow);
      api.release(h);
      throw_runtime("cuda weight arena", "cuMemSetAccess failed");
    }
    chunks.push_back({at, grow, h});
    mapped += grow;
    return true;
  }

  void* take(size_t bytes) {
    const size_t off = round_up(used, 256);
    const size_t end = off + std::max<size_t>(bytes, 1);
    if (end > reserved) return nullptr;
    if (end > mapped) {
      const size_t need = round_up(end - mapped, granularity);
      const size_t want = std::min(std::max(need, round_up(kChunk, granularity)), reserved - mapped);
      if (!map_more(want) && (want == need || !map_more(need))) throw_out_of_device_memory(need);
    }
    used = end;
    return reinterpret_cast<void*>(static_cast<uintptr_t>(base + off));
  }
};

WeightArena::WeightArena(int device) : impl_(std::make_unique<Impl>(device)) {}
WeightArena::~WeightArena() = default;
bool WeightArena::ok() const { return impl_->ok; }
const std::string& WeightArena::unavailable_reason() const { return impl_->why; }
void* WeightArena::take(size_t bytes) { return impl_->ok ? impl_->take(bytes) : nullptr; }
size_t WeightArena::mapped_bytes() const { return impl_->mapped; }

}  // namespace indexcache::cuda
