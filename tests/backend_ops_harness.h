// The harness of tests/test_backend_ops.cpp: deterministic host data, one run of a case on a
// backend (inputs, poisoned outputs, watched buffers, read-back), and the comparison of a run's
// outputs against the CPU reference's. Test-only; included by test_backend_ops.cpp alone.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "indexcache/dtype.h"

namespace indexcache::backend_ops_test {

using Shape = std::vector<int64_t>;

// ---------------------------------------------------------------- deterministic host data

inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
inline uint64_t hash_str(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() { return mix64(s += 0x632BE59BD9B4E019ull); }
  float uniform(float lo, float hi) { return lo + (hi - lo) * static_cast<float>(next() >> 40) * (1.0f / 16777216.0f); }
  int below(int n) { return static_cast<int>(next() % static_cast<uint64_t>(n)); }
};
inline float round_bf16(float v) { return bf16_to_f32(f32_to_bf16(v)); }

// Element role of a tensor: an activation (f32 on exact backends, bf16 on the fast path), or f32 /
// int32 everywhere.
enum class Ty { kAct, kF32, kI32 };
using Gen = std::function<float(size_t i, Rng& rng)>;

// Host values live for the whole process: the CPU backend's placement is a view of them and the
// CUDA backend caches placements by host pointer, so a pointer must never be reused.
inline std::map<std::string, std::unique_ptr<std::vector<float>>>& host_store() {
  static std::map<std::string, std::unique_ptr<std::vector<float>>> s;
  return s;
}

// ---------------------------------------------------------------- one run of a case on a backend

// An output read back: float values (as f32) or indices, plus what the comparison needs.
struct Out {
  std::string name;
  bool is_index = false;
  std::vector<float> f;
  std::vector<int32_t> idx;
  int64_t rows = 0, cols = 0;
  bool ordered = false;         // index order is part of the contract (checked on exact backends)
  std::string tie_window_from;  // float output whose measured error is the near-tie window
  int64_t outside_writes = 0;   // elements of the output's buffer outside the view that changed
};

class OpRun {
 public:
  OpRun(Backend& be, DType act, bool round, std::string key) : be(be), act_(act), round_(round), key_(std::move(key)) {}
  Backend& be;

  DType dtype(Ty t) const { return t == Ty::kAct ? act_ : t == Ty::kF32 ? DType::kF32 : DType::kI32; }

  // The host values of input `name` (deterministic per case), rounded to bf16 where the target
  // stores the tensor as bf16.
  const std::vector<float>& host(const std::string& name, size_t n, Ty t, const Gen& gen) {
    const bool rounded = t == Ty::kAct && round_;
    const std::string k = key_ + "#" + name + (rounded ? "#bf16" : "#f32");
    auto& slot = host_store()[k];
    if (!slot) {
      Rng rng(hash_str(key_ + "#" + name));
      slot = std::make_unique<std::vector<float>>(n);
      for (size_t i = 0; i < n; ++i) (*slot)[i] = gen(i, rng);
      if (rounded)
        for (float& v : *slot) v = round_bf16(v);
    }
    return *slot;
  }
  static Gen uniform(float lo, float hi) {
    return [lo, hi](size_t, Rng& r) { return r.uniform(lo, hi); };
  }

  // A contiguous tensor of `shape`, every element poisoned.
  TensorView alloc(Ty t, const Shape& shape) {
    const DType d = dtype(t);
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    auto a = std::make_unique<Alloc>();
    a->buf = be.alloc(static_cast<size_t>(n) * dtype_size(d));
    a->dtype = d;
    a->n = n;
    TensorView v;
    if (shape.size() == 1) v = view1d(a->buf.data(), d, shape[0]);
    if (shape.size() == 2) v = view2d(a->buf.data(), d, shape[0], shape[1]);
    if (shape.size() == 3) v = view3d(a->buf.data(), d, shape[0], shape[1], shape[2], shape[1] * shape[2], shape[2]);
    std::vector<uint8_t> poison(static_cast<size_t>(n) * dtype_size(d), d == DType::kI32 ? 0x7F : 0xFF);
    be.upload(view1d(a->buf.data(), d, n), poison.data());
    allocs_.push_back(std::move(a));
    return v;
  }
  // Writes the host values of `name` into view v (any strides).
  void fill(const TensorView& v, const std::string& name, Ty t, const Gen& gen) {
    const std::vector<float>& h = host(name, static_cast<size_t>(v.numel()), t, gen);
    if (v.dtype == DType::kBF16) {
      std::vector<uint16_t> b(h.size());
      for (size_t i = 0; i < h.size(); ++i) b[i] = f32_to_bf16(h[i]);
      be.upload(v, b.data());
    } else {
      be.upload(v, h.data());
    }
  }
  TensorView input(const std::string& name, Ty t, const Shape& shape, float lo = -1.0f, float hi = 1.0f) {
    return input_gen(name, t, shape, uniform(lo, hi));
  }
  TensorView input_gen(const std::string& name, Ty t, const Shape& shape, const Gen& gen) {
    TensorView v = alloc(t, shape);
    fill(v, name, t, gen);
    return v;
  }
  TensorView ints(const std::vector<int32_t>& values, const Shape& shape) {
    TensorView v = alloc(Ty::kI32, shape);
    be.upload(v, values.data());
    return v;
  }
  // A placed weight with values uniform in [-scale, scale) (or [lo, hi)).
  TensorView weight(const std::string& name, const Shape& shape, float scale, bool keep_f32 = false) {
    return weight_range(name, shape, -scale, scale, keep_f32);
  }
  TensorView weight_range(const std::string& name, const Shape& shape, float lo, float hi, bool keep_f32 = false) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    const std::vector<float>& h = host("w:" + name, static_cast<size_t>(n), keep_f32 ? Ty::kF32 : Ty::kAct,
                                       uniform(lo, hi));
    return be.place(h.data(), shape, keep_f32);
  }
  // A poisoned output tensor whose buffer is watched (see watch()).
  TensorView output(Ty t, const Shape& shape) {
    TensorView v = alloc(t, shape);
    watch(v);
    return v;
  }
  // Snapshots the buffer holding v: read() then checks nothing outside the read view changed.
  void watch(const TensorView& v) {
    Alloc& a = owner(v);
    a.before.resize(static_cast<size_t>(a.n) * dtype_size(a.dtype));
    be.download(view1d(a.buf.data(), a.dtype, a.n), a.before.data());
  }

  Out read(const std::string& name, const TensorView& v) {
    Out o;
    o.name = name;
    o.rows = v.rank == 1 ? 1 : v.rank == 2 ? v.shape[0] : v.shape[0] * v.shape[1];
    o.cols = v.shape[v.rank - 1];
    const size_t n = static_cast<size_t>(v.numel());
    if (v.dtype == DType::kBF16) {
      std::vector<uint16_t> b(n);
      be.download(v, b.data());
      o.f.resize(n);
      for (size_t i = 0; i < n; ++i) o.f[i] = bf16_to_f32(b[i]);
    } else {
      o.f.resize(n);
      be.download(v, o.f.data());
    }
    o.outside_writes = outside_writes(v);
    return o;
  }
  Out read_idx(const std::string& name, const TensorView& v, bool ordered, const std::string& tie_from = "") {
    Out o;
    o.name = name;
    o.is_index = true;
    o.rows = v.shape[0];
    o.cols = v.shape[1];
    o.ordered = ordered;
    o.tie_window_from = tie_from;
    o.idx.resize(static_cast<size_t>(v.numel()));
    be.download(v, o.idx.data());
    o.outside_writes = outside_writes(v);
    return o;
  }

 private:
  struct Alloc {
    Buffer buf;
    DType dtype = DType::kF32;
    int64_t n = 0;
    std::vector<uint8_t> before;
  };
  Alloc& owner(const TensorView& v) {
    for (auto& a : allocs_) {
      const char* b = static_cast<const char*>(a->buf.data());
      const char* p = static_cast<const char*>(v.data);
      if (p >= b && p < b + a->n * static_cast<int64_t>(dtype_size(a->dtype))) return *a;
    }
    throw std::runtime_error("test harness: view outside every allocation");
  }
  // Elements of v's watched buffer outside v that differ from the snapshot (0 if not watched).
  int64_t outside_writes(const TensorView& v) {
    Alloc& a = owner(v);
    if (a.before.empty()) return 0;
    const size_t es = dtype_size(a.dtype);
    std::vector<uint8_t> now(a.before.size());
    be.download(view1d(a.buf.data(), a.dtype, a.n), now.data());
    std::vector<char> inside(static_cast<size_t>(a.n), 0);
    const int64_t base = (static_cast<const char*>(v.data) - static_cast<const char*>(a.buf.data())) /
                         static_cast<int64_t>(es);
    const int64_t d0 = v.rank == 3 ? v.shape[0] : 1, d1 = v.rank >= 2 ? v.shape[v.rank - 2] : 1;
    const int64_t s0 = v.rank == 3 ? v.stride[0] : 0, s1 = v.rank >= 2 ? v.stride[v.rank - 2] : 0;
    for (int64_t i = 0; i < d0; ++i)
      for (int64_t j = 0; j < d1; ++j)
        for (int64_t k = 0; k < v.shape[v.rank - 1]; ++k) inside[static_cast<size_t>(base + i * s0 + j * s1 + k)] = 1;
    int64_t changed = 0;
    for (int64_t e = 0; e < a.n; ++e)
      if (!inside[static_cast<size_t>(e)] && std::memcmp(&now[e * es], &a.before[e * es], es) != 0) ++changed;
    return changed;
  }

  DType act_;
  bool round_;
  std::string key_;
  std::vector<std::unique_ptr<Alloc>> allocs_;
};

struct Case {
  std::string op, name;
  bool required = true;  // the Session relies on it: a refusal by a backend is a failure
  std::function<std::vector<Out>(OpRun&)> body;
};

inline void* elem(const TensorView& v, int64_t offset) {
  return static_cast<char*>(v.data) + offset * static_cast<int64_t>(dtype_size(v.dtype));
}
inline std::string str(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline std::string str(const char* fmt, ...) {
  char b[256];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(b, sizeof b, fmt, ap);
  va_end(ap);
  return b;
}

// ---------------------------------------------------------------- comparison

struct Verdict {
  bool ok = true;
  std::string text;
  double float_err = 0;  // max abs error (float outputs), the near-tie window of index outputs
};

inline bool same_special(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return a == b;  // +inf / -inf
}

inline Verdict compare_float(const Out& ref, const Out& got, double tol) {
  Verdict v;
  if (ref.f.size() != got.f.size()) return {false, "size differs", 0};
  double max_err = 0, max_ref = 0;
  int64_t special = 0;
  for (size_t i = 0; i < ref.f.size(); ++i) {
    const float r = ref.f[i], g = got.f[i];
    if (!std::isfinite(r) || !std::isfinite(g)) {
      special += !same_special(r, g);
      continue;
    }
    max_err = std::max(max_err, static_cast<double>(std::fabs(g - r)));
    max_ref = std::max(max_ref, static_cast<double>(std::fabs(r)));
  }
  const double rel = max_ref > 0 ? max_err / max_ref : max_err;
  v.float_err = max_err;
  v.ok = special == 0 && rel <= tol && got.outside_writes == 0;
  v.text = str("err %.2e (max abs %.2e / max |ref| %.2e, tol %.0e)", rel, max_err, max_ref, tol);
  if (special) v.text += str(", %lld NaN/Inf position mismatches", static_cast<long long>(special));
  if (got.outside_writes) v.text += str(", %lld writes outside the view", static_cast<long long>(got.outside_writes));
  return v;
}

// Index outputs: exact order on exact backends where the op promises it; else per-row multisets,
// an index the CPU did not select allowed only when its CPU score lies within `window` of the
// CPU's k-th score (`scores`: the CPU's [rows, cols] scores, or null).
inline Verdict compare_index(const Out& ref, const Out& got, bool exact, const Out* scores, double window) {
  Verdict v;
  if (ref.idx.size() != got.idx.size()) return {false, "size differs", 0};
  int64_t mismatches = 0, swaps = 0;
  const int64_t k = ref.cols;
  for (int64_t t = 0; t < ref.rows; ++t) {
    const int32_t* R = ref.idx.data() + t * k;
    const int32_t* G = got.idx.data() + t * k;
    if (exact && ref.ordered && !scores) {
      for (int64_t i = 0; i < k; ++i) mismatches += R[i] != G[i];
      continue;
    }
    std::vector<int32_t> r(R, R + k), g(G, G + k);
    std::sort(r.begin(), r.end());
    std::sort(g.begin(), g.end());
    std::vector<int32_t> extra;
    std::set_difference(g.begin(), g.end(), r.begin(), r.end(), std::back_inserter(extra));
    float kth = INFINITY;
    if (scores)
      for (int32_t i : r)
        if (i >= 0 && i < scores->cols) kth = std::min(kth, scores->f[t * scores->cols + i]);
    for (int32_t i : extra) {
      const bool near = scores && window > 0 && i >= 0 && i < scores->cols &&
                        std::fabs(scores->f[t * scores->cols + i] - kth) <= window;
      (near ? swaps : mismatches) += 1;
    }
  }
  v.ok = mismatches == 0 && got.outside_writes == 0;
  v.text = str("%lld mismatches", static_cast<long long>(mismatches));
  if (scores) v.text += str(", %lld near-tie swaps (window %.1e)", static_cast<long long>(swaps), window);
  if (exact && ref.ordered && !scores) v.text += " (order checked)";
  if (got.outside_writes) v.text += str(", %lld writes outside the view", static_cast<long long>(got.outside_writes));
  return v;
}

}  // namespace indexcache::backend_ops_test
