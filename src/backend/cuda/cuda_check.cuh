// Internal to src/backend/cuda: error checking that turns CUDA errors into indexcache::Error.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "indexcache/error.h"

namespace indexcache::cuda::detail {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw_runtime(std::string("cuda ") + what, cudaGetErrorString(e));
}

}  // namespace indexcache::cuda::detail

#define IC_CUDA_CHECK(expr) ::indexcache::cuda::detail::check((expr), #expr)
// After a launch: reports configuration errors now (asynchronous faults surface at the next sync).
#define IC_CUDA_CHECK_LAUNCH(name) ::indexcache::cuda::detail::check(cudaGetLastError(), name)
