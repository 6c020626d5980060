// Grouped GEMM for the MoE experts of a prefill chunk: one launch computes, for every expert e,
//   y[r, :] = x[r, :] @ W_e^T            for rows r in [offsets[e], offsets[e + 1])
// with bf16 inputs, f32 accumulation and a bf16 output. The row ranges live in DEVICE memory (the
// output of moe_dispatch), so the host never waits for the routing: no stream sync, no per-shape
// cuBLASLt plan, and the call may be captured into a CUDA graph. The grid is sized from `max_rows`,
// an upper bound of offsets[experts] the host knows (tokens x experts per token); blocks whose tile
// slot lies past the last expert's rows exit at once.
//
// Every pointer is a DEVICE pointer; bf16 tensors are `void*` holding IEEE bfloat16. The function
// only enqueues work on `stream` (cudaStream_t as void*) and throws indexcache::Error (kRuntime) on
// bad arguments, before anything is launched, or on a launch error. No CUDA types in this header.
#pragma once

#include <cstdint>
#include <string>

namespace indexcache::gpu {

struct GroupedGemmArgs {
  const void* x = nullptr;          // bf16 [rows][k], rows `ldx` elements apart (the expert-sorted rows)
  int64_t ldx = 0;
  const void* w = nullptr;          // bf16 [experts][n][k]: expert e at w + e * w_expert_stride,
  int64_t ldw = 0;                  //   its rows `ldw` elements apart, k contiguous
  int64_t w_expert_stride = 0;
  void* y = nullptr;                // bf16 [rows][n], rows `ldy` elements apart
  int64_t ldy = 0;
  const int32_t* offsets = nullptr; // DEVICE int32 [experts + 1]: offsets[0] = 0, non-decreasing,
                                    //   offsets[experts] <= max_rows (not checked: device memory)
  int experts = 0;
  int max_rows = 0;                 // upper bound of offsets[experts]; sizes the grid (0: nothing to do)
  int n = 0, k = 0;
  // Kernel, for A/B measurement (same results up to f32 summation order): 0 = default: Hopper
  // wgmma (sm_90a), 128 x 128 tiles, 2 blocks per SM; 1 = mma.sync, 128 x 128 tiles, 2 blocks per
  // SM; 2 = mma.sync, 128 x 256 tiles, 1 block per SM; 3 = wgmma, 128 x 256 tiles, 1 block per SM.
  int variant = 0;
};

// Why `a` cannot run ("" when it can): n, k, ldx, ldw, ldy and w_expert_stride must be multiples of
// 8 elements with ldx, ldw >= k and ldy >= n; x, w and y 16-byte aligned; pointers non-null;
// experts >= 1, max_rows >= 0, n, k >= 1, variant 0..3. Rows outside [0, offsets[experts]) of y
// are never written, nor are columns >= n; x rows outside it are never read.
std::string grouped_gemm_unsupported(const GroupedGemmArgs& a);
inline bool grouped_gemm_supported(const GroupedGemmArgs& a) { return grouped_gemm_unsupported(a).empty(); }

// Enqueues the grouped product on `stream`; throws (naming the first violated requirement) when
// grouped_gemm_unsupported(a) is not empty.
void grouped_gemm_bf16(const GroupedGemmArgs& a, void* stream);

}  // namespace indexcache::gpu
