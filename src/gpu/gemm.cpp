// cuBLASLt GEMM with cached descriptors (see gemm.h).
//
// Row-major y[m, n] = x[m, k] W[n, k]^T is, read column-major, D[n, m] = op(A) B with A = W viewed as
// a column-major [k, n] matrix (ld = ldw) transposed, and B = x viewed as column-major [k, m]
// (ld = ldx): the "TN" form cuBLASLt prefers for tensor cores.
#include "gpu/gemm.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <array>
#include <map>
#include <string>

#include "backend/cuda/cuda_check.cuh"
#include "indexcache/error.h"

namespace indexcache::gpu {

namespace {

void check_lt(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw_runtime(std::string("cublasLt ") + what, cublasLtGetStatusString(s));
}

// Largest power of two (<= 256) dividing every value: the alignment cuBLASLt may assume.
uint32_t alignment_of(std::initializer_list<uint64_t> values) {
  uint32_t a = 256;
  for (uint64_t v : values)
    while (a > 1 && v % a != 0) a /= 2;
  return a;
}

using Key = std::array<int64_t, 16>;

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

void set_batch(cublasLtMatrixLayout_t l, int batch, int64_t stride) {
  if (batch <= 1) return;
  const int32_t count = batch;
  check_lt(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)),
           "layout batch count");
  check_lt(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                            sizeof(stride)),
           "layout batch stride");
}

}  // namespace

struct Gemm::Impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  std::map<Key, Plan> plans;

  ~Impl() {
    for (auto& [k, p] : plans) {
      cublasLtMatrixLayoutDestroy(p.a);
      cublasLtMatrixLayoutDestroy(p.b);
      cublasLtMatrixLayoutDestroy(p.c);
      cublasLtMatmulDescDestroy(p.op);
    }
    if (workspace) cudaFree(workspace);
    if (handle) cublasLtDestroy(handle);
  }

  Plan& plan_for(const GemmArgs& g) {
    const uint64_t ab = alignment_of({reinterpret_cast<uint64_t>(g.w), static_cast<uint64_t>(g.w_batch_stride) * 2});
    const uint64_t bb = alignment_of({reinterpret_cast<uint64_t>(g.x), static_cast<uint64_t>(g.x_batch_stride) * 2});
    const int esize = g.y_f32 ? 4 : 2;
    const uint64_t cb = alignment_of({reinterpret_cast<uint64_t>(g.y), static_cast<uint64_t>(g.y_batch_stride) * esize});
    const Key key{g.m, g.n, g.k, g.ldx, g.ldw, g.ldy, g.y_f32, g.beta != 0.0f, g.batch, g.x_batch_stride,
                  g.w_batch_stride, g.y_batch_stride, static_cast<int64_t>(ab), static_cast<int64_t>(bb),
                  static_cast<int64_t>(cb), 0};
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;

    Plan p;
    check_lt(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "matmul desc");
    const int32_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    check_lt(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "transa");
    check_lt(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "transb");
    check_lt(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, g.k, g.n, g.ldw), "layout W");
    check_lt(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, g.k, g.m, g.ldx), "layout x");
    check_lt(cublasLtMatrixLayoutCreate(&p.c, g.y_f32 ? CUDA_R_32F : CUDA_R_16BF, g.n, g.m, g.ldy), "layout y");
    set_batch(p.a, g.batch, g.w_batch_stride);
    set_batch(p.b, g.batch, g.x_batch_stride);
    set_batch(p.c, g.batch, g.y_batch_stride);

    cublasLtMatmulPreference_t pref = nullptr;
    check_lt(cublasLtMatmulPreferenceCreate(&pref), "preference");
    const uint64_t ws = workspace_bytes;
    const uint32_t a32 = static_cast<uint32_t>(ab), b32 = static_cast<uint32_t>(bb), c32 = static_cast<uint32_t>(cb);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &a32, sizeof(a32));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &b32, sizeof(b32));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &c32, sizeof(c32));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &c32, sizeof(c32));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(handle, p.op, p.a, p.b, p.c, p.c, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
      cublasLtMatrixLayoutDestroy(p.a);
      cublasLtMatrixLayoutDestroy(p.b);
      cublasLtMatrixLayoutDestroy(p.c);
      cublasLtMatmulDescDestroy(p.op);
      throw_runtime("cublasLt gemm", "no algorithm for m=" + std::to_string(g.m) + " n=" + std::to_string(g.n) +
                                         " k=" + std::to_string(g.k) + " batch=" + std::to_string(g.batch));
    }
    p.algo = result.algo;
    return plans.emplace(key, p).first->second;
  }
};

Gemm::Gemm(size_t workspace_bytes) : impl_(std::make_unique<Impl>()) {
  check_lt(cublasLtCreate(&impl_->handle), "create");
  impl_->workspace_bytes = workspace_bytes;
  if (workspace_bytes) IC_CUDA_CHECK(cudaMalloc(&impl_->workspace, workspace_bytes));
}

Gemm::~Gemm() = default;

void Gemm::run(const GemmArgs& g, void* stream) {
  if (g.m <= 0 || g.n <= 0 || g.k <= 0 || g.batch <= 0 || !g.x || !g.w || !g.y)
    throw_runtime("gemm", "empty or null operand (m=" + std::to_string(g.m) + " n=" + std::to_string(g.n) +
                              " k=" + std::to_string(g.k) + ")");
  if (g.ldx < g.k || g.ldw < g.k || g.ldy < g.n)
    throw_runtime("gemm", "leading dimension smaller than the row (ldx " + std::to_string(g.ldx) + ", ldw " +
                              std::to_string(g.ldw) + ", ldy " + std::to_string(g.ldy) + ")");
  Plan& p = impl_->plan_for(g);
  check_lt(cublasLtMatmul(impl_->handle, p.op, &g.alpha, g.w, p.a, g.x, p.b, &g.beta, g.y, p.c, g.y, p.c, &p.algo,
                          impl_->workspace, impl_->workspace_bytes, static_cast<cudaStream_t>(stream)),
           "matmul");
}

}  // namespace indexcache::gpu
