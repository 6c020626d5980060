// The CUDA backend: one GPU, one stream it owns, device memory for buffers and placed weights.
//   Precision::kBf16 (the fast path): bf16 activations, caches and placed weights (keep_f32
//     placements stay f32), f32 accumulation everywhere; cuBLASLt / GEMV projections, the grouped
//     GEMM MoE, the tensor-core indexer, radix top-k and sparse MLA where the shapes allow, the
//     generic bf16 kernels elsewhere.
//   Precision::kF32 (the exact path): f32 throughout, the f32 CUDA ops of cuda_ops.h and an f32
//     GEMM; MoE routing on the host with the CPU backend's own routing code. For parity tests.
// No CUDA types here.
#pragma once

#include <memory>

#include "backend/backend.h"
#include "indexcache/device.h"

namespace indexcache {

// The backend on CUDA device `gpu`. Throws Error(kRuntime) with a one-line reason when there is no
// CUDA device, the ordinal does not exist ("--gpu 3: only 1 CUDA device") or this build's kernels
// cannot run on the device. Allocations that do not fit throw "out of device memory: needs X GiB,
// Y GiB free".
std::unique_ptr<Backend> make_cuda_backend(int gpu, Precision precision);
// Free and total memory of CUDA device `gpu` (same errors as make_cuda_backend for a missing one).
DeviceMemory cuda_device_memory(int gpu);

}  // namespace indexcache
