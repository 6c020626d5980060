// A cuBLASLt wrapper for the model's projections: y[M, N] = alpha * x[M, K] @ W[N, K]^T (+ beta * y),
// bf16 inputs, f32 accumulation, bf16 or f32 output, optionally strided-batched (one GEMM per head).
// Matmul descriptors and the chosen algorithm are cached per problem shape, so repeated calls cost
// one cublasLtMatmul launch; every call is stream-ordered and safe inside CUDA graph capture (the
// workspace is allocated once, up front). No CUDA types in this header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace indexcache::gpu {

struct GemmArgs {
  const void* x = nullptr;  // bf16 [m, k], rows `ldx` elements apart
  int64_t ldx = 0;
  const void* w = nullptr;  // bf16 [n, k], rows `ldw` elements apart
  int64_t ldw = 0;
  void* y = nullptr;        // [m, n], rows `ldy` elements apart; bf16, or f32 when y_f32
  int64_t ldy = 0;
  bool y_f32 = false;
  int m = 0, n = 0, k = 0;
  float alpha = 1.0f;
  float beta = 0.0f;        // y = alpha * x W^T + beta * y (beta != 0 reads y)
  // Strided batch: matrix b uses x + b * x_batch_stride etc. (elements).
  int batch = 1;
  int64_t x_batch_stride = 0, w_batch_stride = 0, y_batch_stride = 0;
};

class Gemm {
 public:
  explicit Gemm(size_t workspace_bytes = size_t{64} << 20);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;
  // Enqueues the product on `stream` (cudaStream_t as void*). Throws indexcache::Error on bad
  // arguments or when cuBLASLt finds no algorithm.
  void run(const GemmArgs& a, void* stream);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace indexcache::gpu
