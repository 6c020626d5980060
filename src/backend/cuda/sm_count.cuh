// Internal to src/backend/cuda: the current device's multiprocessor count, queried once per device
// (the attribute query is not free on the decode path), for sizing grids.
#pragma once

#include <cuda_runtime.h>

#include <atomic>

#include "backend/cuda/cuda_check.cuh"

namespace indexcache::cuda::detail {

inline int current_device_sm_count() {
  static std::atomic<int> cache[64] = {};
  int dev = 0, sms = 0;
  IC_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev >= 0 && dev < 64) sms = cache[dev].load(std::memory_order_relaxed);
  if (sms <= 0) {
    IC_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    if (sms <= 0) sms = 1;
    if (dev >= 0 && dev < 64) cache[dev].store(sms, std::memory_order_relaxed);
  }
  return sms;
}

}  // namespace indexcache::cuda::detail
