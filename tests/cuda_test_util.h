// Host helpers shared by the GPU tests (tests/test_cuda_*.cpp): the skip macro, random inputs from
// fixed seeds, bf16 conversion, poison constants, the per-element tolerance checker and the
// lightning-indexer reference (CPU scores and their Cauchy-Schwarz tolerance bound).
// Header-only and test-only. It carries no CUDA types; download_range (cudaMemcpy) exists only in
// files that include <cuda_runtime.h> before this header. Everything here is inline.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/device_buffer.h"
#include "gpu/synthetic_gpu_model.h"

// Skips the test (GTEST_SKIP) where no CUDA device is usable, naming the reason.
#define REQUIRE_GPU()                                                                     \
  if (::indexcache::cuda::cuda_available()) {                                             \
  } else                                                                                  \
    GTEST_SKIP() << "skipped: " << ::indexcache::cuda::device_description()               \
                 << "; GPU tests run on the GPU machine: scripts/device_build.sh"

namespace indexcache::cuda_test {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int kNanByte = 0xFF;     // DeviceBuffer::fill_bytes: f32 (and bf16) NaN
constexpr int kPoisonByte = 0x7F;  // DeviceBuffer::fill_bytes: int32 0x7F7F7F7F, never a valid index

// This GPU's dense bf16 matrix peak in TFLOP/s (cuBLASLt 8192^3, gpu::measure_bf16_peak_tflops),
// measured once per process: the yardstick of the "% of peak" timing lines. Hopper's dense fp8 peak
// is twice it.
inline double bf16_peak_tflops() {
  static const double v = gpu::measure_bf16_peak_tflops();
  return v;
}

// ---------------------------------------------------------------- random values, bf16

// n values uniform in [lo, hi).
inline std::vector<float> uniform(size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// f32 -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN.
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float from_bf16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = to_bf16(v[i]);
  return o;
}
inline std::vector<float> from_bf16(const std::vector<uint16_t>& v) {
  std::vector<float> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = from_bf16(v[i]);
  return o;
}
// Random values already representable in bf16 (so host and device see identical inputs); the
// same draws as uniform().
inline std::vector<float> uniform_bf16(size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = from_bf16(to_bf16(d(rng)));
  return v;
}

// ---------------------------------------------------------------- poison, device buffers

// A device buffer of `bytes` with every byte set to `byte` (default: f32 NaN).
inline cuda::DeviceBuffer poisoned(size_t bytes, int byte = kNanByte) {
  cuda::DeviceBuffer b(bytes);
  b.fill_bytes(byte);
  return b;
}

// True for the f32 NaN that fill_bytes(kNanByte) writes (an element no kernel wrote).
inline bool is_poison(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u == 0xFFFFFFFFu;
}

#ifdef CUDART_VERSION
// Copies `count` floats starting at element `offset` of a device buffer (NaN on a copy error).
inline std::vector<float> download_range(const cuda::DeviceBuffer& b, size_t offset, size_t count) {
  std::vector<float> v(count);
  const cudaError_t e = cudaMemcpy(v.data(), b.as<float>() + offset, count * sizeof(float), cudaMemcpyDeviceToHost);
  if (e != cudaSuccess) std::fill(v.begin(), v.end(), std::nanf(""));
  return v;
}
#endif

// ---------------------------------------------------------------- norms and comparisons

// Euclidean norm, accumulated in double.
inline double norm2(const float* x, int n) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return std::sqrt(s);
}

inline bool all_finite(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(), [](float f) { return std::isfinite(f); });
}

// ||a - b|| / ||b|| over n values; a NaN or infinity in a gives +inf.
inline double rel_l2(const float* a, const float* b, int n) {
  double num = 0, den = 0;
  for (int i = 0; i < n; ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}
inline double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  return rel_l2(a.data(), b.data(), static_cast<int>(a.size()));
}

// Compares got against ref element-wise with per-element tolerances: |got - ref| <= tol, NaN and
// infinities never pass, except that an infinite ref must be matched exactly. The first 5 failures
// (and fail() notes) are kept for the message; max_abs / max_ratio cover every non-NaN element.
struct FloatCheck {
  int64_t checked = 0, bad = 0;
  double max_abs = 0, max_ratio = 0;
  std::ostringstream first;
  std::string a_name, b_name;  // labels of the location's first two coordinates ("" = bare numbers)

  FloatCheck() = default;
  // Messages read "at (t 3, s 7)" for FloatCheck("t", "s"), "at (3, 7)" for FloatCheck().
  FloatCheck(std::string a, std::string b) : a_name(std::move(a)), b_name(std::move(b)) {}

  // (a, b, c) locate the element in the failure message (c < 0: not printed).
  void check(float got, float ref, double tol, int64_t a, int64_t b, int64_t c = -1) {
    ++checked;
    bool ok;
    if (std::isinf(ref)) {
      ok = got == ref;
    } else {
      const double err = std::fabs(static_cast<double>(got) - ref);
      ok = !std::isnan(got) && !std::isinf(got) && err <= tol;
      if (!std::isnan(got)) {
        max_abs = std::max(max_abs, err);
        if (tol > 0) max_ratio = std::max(max_ratio, err / tol);
      }
    }
    if (!ok && bad++ < 5) {
      first << "  at (" << label(a_name) << a << ", " << label(b_name) << b;
      if (c >= 0) first << ", " << c;
      first << "): got " << got << " want " << ref << " tol " << tol << "\n";
    }
  }
  // Counts a failure that is not a value comparison (e.g. written padding).
  void fail(const std::string& why) {
    if (bad++ < 5) first << "  " << why << "\n";
  }
  std::string summary() const {
    std::ostringstream o;
    o << bad << " of " << checked << " bad, max|err| " << max_abs << ", max err/tol " << max_ratio << "\n"
      << first.str();
    return o.str();
  }

 private:
  static std::string label(const std::string& name) { return name.empty() ? name : name + " "; }
};

// ---------------------------------------------------------------- lightning-indexer reference

// Host indexer inputs as the CPU reads them (f32), with the tolerance bound of each score:
// |score(t, s)| <= scale * q_weight[t] * k_norm[s] (Cauchy-Schwarz over heads and dims).
struct IndexerHostInputs {
  int tokens = 0, keys = 0, heads = 0, dim = 0;
  std::vector<float> qf;  // [tokens][heads][dim]
  std::vector<float> w;   // [tokens][heads]
  std::vector<float> kf;  // [keys][dim] (at least)
  std::vector<int32_t> pos;
  float scale = 0;
  std::vector<double> q_weight;  // per token: sum_h |w_h| * |q_h|
  std::vector<double> k_norm;    // per key: |k_s|
};

// pos_mode 0: the last chunk of the cache (positions keys - tokens + t); 1: a chunk in the middle
// (keys / 3 + t, capped at keys - 1); 2: random positions.
inline std::vector<int32_t> indexer_positions(int tokens, int keys, int pos_mode, std::mt19937& rng) {
  std::uniform_int_distribution<int> any(0, keys - 1);
  std::vector<int32_t> pos(tokens);
  for (int t = 0; t < tokens; ++t)
    pos[t] = pos_mode == 0   ? std::max(0, keys - tokens + t)
             : pos_mode == 1 ? std::min(keys - 1, keys / 3 + t)
                             : any(rng);
  return pos;
}

// Fills q_weight (for every token, or only `rows`; the others stay 0) and k_norm (every key).
inline void compute_indexer_bounds(IndexerHostInputs* in, const std::vector<int>& rows = {}) {
  in->q_weight.assign(in->tokens, 0.0);
  auto token_weight = [&](int t) {
    for (int h = 0; h < in->heads; ++h) {
      const float* qh = in->qf.data() + (static_cast<size_t>(t) * in->heads + h) * in->dim;
      in->q_weight[t] += std::fabs(in->w[static_cast<size_t>(t) * in->heads + h]) * norm2(qh, in->dim);
    }
  };
  if (rows.empty()) {
    for (int t = 0; t < in->tokens; ++t) token_weight(t);
  } else {
    for (int t : rows) token_weight(t);
  }
  in->k_norm.assign(in->keys, 0.0);
  for (int s = 0; s < in->keys; ++s) in->k_norm[s] = norm2(in->kf.data() + static_cast<size_t>(s) * in->dim, in->dim);
}

// CPU reference (cpu::indexer_scores) for tokens [t0, t0 + n) into ref (n rows of `stride`).
inline void cpu_indexer_rows(const IndexerHostInputs& in, int t0, int n, int64_t stride, std::vector<float>* ref) {
  ref->assign(static_cast<size_t>(n) * stride, 0.0f);
  IndexerScoreParams p;
  p.q = in.qf.data() + static_cast<size_t>(t0) * in.heads * in.dim;
  p.w = in.w.data() + static_cast<size_t>(t0) * in.heads;
  p.k = in.kf.data();
  p.positions = in.pos.data() + t0;
  p.scores = ref->data();
  p.scores_stride = stride;
  p.tokens = n;
  p.keys = in.keys;
  p.heads = in.heads;
  p.head_dim = in.dim;
  p.scale = in.scale;
  cpu::indexer_scores(p);
}

// Checks GPU score rows [t0, t0 + n) (got: n rows of `stride`) against the CPU, each score within
// rel_tol of its Cauchy-Schwarz bound; the stride padding (s >= keys) must still hold the poison.
inline void check_indexer_rows(const IndexerHostInputs& in, double rel_tol, int t0, int n, int64_t stride,
                               const std::vector<float>& got, FloatCheck* fc) {
  std::vector<float> ref;
  cpu_indexer_rows(in, t0, n, stride, &ref);
  for (int r = 0; r < n; ++r) {
    const int t = t0 + r;
    for (int64_t s = 0; s < stride; ++s) {
      const float g = got[static_cast<size_t>(r) * stride + s];
      if (s >= in.keys) {
        if (!is_poison(g)) fc->fail("padding written at t " + std::to_string(t) + " s " + std::to_string(s));
        continue;
      }
      const double tol = rel_tol * in.scale * in.q_weight[t] * in.k_norm[s] + 1e-30;
      fc->check(g, ref[static_cast<size_t>(r) * stride + s], tol, t, s);
    }
  }
}

// Query-key pairs a causal indexer computes: sum over tokens of min(keys, position + 1).
inline double visible_pairs(const std::vector<int32_t>& pos, int keys) {
  double pairs = 0;
  for (int32_t p : pos) pairs += std::min(keys, p + 1);
  return pairs;
}

}  // namespace indexcache::cuda_test
