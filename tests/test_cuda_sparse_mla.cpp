// cuda::sparse_mla_bf16 (sparse MLA attention, absorbed form, bf16 tensor cores) against the CPU
// reference cpu::sparse_attention run on the same bf16 values converted to f32 (kv_heads 1; K and V
// point into the same latent rows, V = their first 512 dims).
//  - Fresh random inputs from fixed seeds; outputs and lse poisoned (bf16 / f32 NaN) before each run.
//  - Every case runs with automatic splits, 1 split (direct path: the wgmma kernel by default) and
//    3 splits (split + combine), and with the mma.sync kernels forced (variants 1 and 3).
//  - Output tolerance per element: 1e-2 * |ref| + 4e-3 * max|v| over the token's selected rows (the
//    kernel rounds the probabilities to bf16 before P V: at most 2^-9 * sum_j p_j |v_j|, plus the bf16
//    rounding of the output). Logits are made peaky (scale 0.25 on uniform data) so outputs are well
//    above that bound and a wrong row, head or dim shows.
//  - lse against a double-precision host computation: 1e-3 + 1e-4 |ref|; -inf must match exactly.
//  - Variant 2 (the wgmma kernel, one split, any head count: the last 64-head group padded) on its
//    own cases: heads 64 and 128, and 1, 20, 24, 33, 100, 127 (padded groups), selections of 2048,
//    1999, 130, 64, 33, 1 and 0, holes, early and all-masked tokens, kv_stride 576 / 584 / 640.
//  - The output and lse buffers extend past the last (token, head) by a poisoned guard of 64 rows:
//    a kernel that stored the padding rows of the last token's head group would write there, so the
//    guard must come back untouched after every run (the padding rows of earlier tokens land on the
//    next token's heads, which the comparison with the reference catches).
// Without a CUDA device the GPU tests skip. Real-shape timings print "[cuda-ops]" lines (median of
// 10 CUDA-event-timed runs).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/dsa_bf16.h"
#include "indexcache/error.h"
#include "cuda_test_util.h"

namespace indexcache {
namespace {

using cuda::DeviceBuffer;
using namespace cuda_test;

constexpr int kDk = 576, kDv = 512;

// Fast deterministic generator (the real shapes need ~400M values).
struct XorShift {
  uint64_t s;
  explicit XorShift(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  float uniform() { return static_cast<float>(next() >> 40) * (2.0f / 16777216.0f) - 1.0f; }  // [-1, 1)
  int below(int n) { return static_cast<int>((next() >> 33) % static_cast<uint64_t>(n)); }
};

std::vector<uint16_t> random_bf16(size_t n, XorShift& rng) {
  std::vector<uint16_t> v(n);
  for (uint16_t& x : v) x = to_bf16(rng.uniform());
  return v;
}

struct MlaCase {
  int tokens, heads, selected, keys;
  int64_t kv_stride;
  float scale;
  int empty_token;  // a token whose entries are all -1 (-1: none)
};

struct MlaData {
  std::vector<uint16_t> q;   // [tokens][heads][576]
  std::vector<uint16_t> kv;  // [keys][kv_stride]
  std::vector<int32_t> idx;  // [tokens][selected]
};

// Random indices with repeats; holes (-1) at i % 11 == 5; every third token is "early in the
// sequence" (only its first 5 + t entries valid, the rest -1); `empty_token` has no valid entry.
std::vector<int32_t> make_indices(const MlaCase& c, XorShift& rng) {
  std::vector<int32_t> idx(static_cast<size_t>(c.tokens) * c.selected);
  for (int t = 0; t < c.tokens; ++t)
    for (int i = 0; i < c.selected; ++i) {
      int32_t j = rng.below(c.keys);
      if (i % 11 == 5) j = -1;
      if (t % 3 == 2 && i >= 5 + t) j = -1;
      if (t == c.empty_token) j = -1;
      idx[static_cast<size_t>(t) * c.selected + i] = j;
    }
  return idx;
}

MlaData make_data(const MlaCase& c, XorShift& rng) {
  MlaData d;
  d.q = random_bf16(static_cast<size_t>(c.tokens) * c.heads * kDk, rng);
  d.kv = random_bf16(static_cast<size_t>(c.keys) * c.kv_stride, rng);
  d.idx = make_indices(c, rng);
  return d;
}

struct Stats {
  int64_t checked = 0, bad = 0;
  double max_abs = 0, max_ratio = 0;
  std::ostringstream first;
  void check(float got, double ref, double tol, const char* what, int t, int h, int d) {
    ++checked;
    bool ok;
    if (std::isinf(ref)) {
      ok = static_cast<double>(got) == ref;
    } else {
      const double err = std::fabs(static_cast<double>(got) - ref);
      ok = !std::isnan(got) && err <= tol;
      if (!std::isnan(got)) {
        max_abs = std::max(max_abs, err);
        max_ratio = std::max(max_ratio, err / tol);
      }
    }
    if (!ok && bad++ < 6)
      first << "  " << what << " t=" << t << " h=" << h << " d=" << d << ": got " << got << " want " << ref
            << " tol " << tol << "\n";
  }
};

// CPU reference for tokens `toks`: cpu::sparse_attention on a compacted f32 copy of the rows those
// tokens select, plus lse in double (all heads where cheap, else heads 0, 1, H/2, H-1; NaN = unchecked)
// and max|v| over each token's selected rows.
struct Reference {
  std::vector<int> toks;
  std::vector<float> out;   // [toks][heads][512]
  std::vector<double> lse;  // [toks][heads]
  std::vector<double> vmax; // [toks]
};

Reference reference(const MlaCase& c, const MlaData& d, const std::vector<int>& toks) {
  const int n = static_cast<int>(toks.size());
  const int H = c.heads, K = c.selected;
  std::vector<int32_t> remap(c.keys, -1);
  std::vector<float> rows;  // compact [rows][576] f32
  std::vector<int32_t> idx(static_cast<size_t>(n) * K);
  std::vector<float> q(static_cast<size_t>(n) * H * kDk);
  for (int a = 0; a < n; ++a) {
    const int t = toks[a];
    for (int i = 0; i < K; ++i) {
      const int32_t j = d.idx[static_cast<size_t>(t) * K + i];
      if (j >= 0 && remap[j] < 0) {
        remap[j] = static_cast<int32_t>(rows.size() / kDk);
        for (int e = 0; e < kDk; ++e) rows.push_back(from_bf16(d.kv[static_cast<size_t>(j) * c.kv_stride + e]));
      }
      idx[static_cast<size_t>(a) * K + i] = j >= 0 ? remap[j] : -1;
    }
    for (int e = 0; e < H * kDk; ++e)
      q[static_cast<size_t>(a) * H * kDk + e] = from_bf16(d.q[static_cast<size_t>(t) * H * kDk + e]);
  }
  if (rows.empty()) rows.assign(kDk, 0.0f);
  Reference r;
  r.toks = toks;
  r.out.assign(static_cast<size_t>(n) * H * kDv, std::nanf(""));
  r.lse.assign(static_cast<size_t>(n) * H, std::nan(""));
  r.vmax.assign(n, 0.0);
  SparseAttentionParams p;
  p.q = q.data();
  p.q_token_stride = static_cast<int64_t>(H) * kDk;
  p.q_head_stride = kDk;
  p.k = rows.data();
  p.k_token_stride = kDk;
  p.k_head_stride = 0;
  p.v = rows.data();
  p.v_token_stride = kDk;
  p.v_head_stride = 0;
  p.indices = idx.data();
  p.num_selected = K;
  p.out = r.out.data();
  p.out_token_stride = static_cast<int64_t>(H) * kDv;
  p.out_head_stride = kDv;
  p.tokens = n;
  p.heads = H;
  p.kv_heads = 1;
  p.head_dim_k = kDk;
  p.head_dim_v = kDv;
  p.scale = c.scale;
  cpu::sparse_attention(p);

  for (int a = 0; a < n; ++a) {
    const int32_t* sel = &idx[static_cast<size_t>(a) * K];
    int m = 0;
    for (int i = 0; i < K; ++i) {
      if (sel[i] < 0) continue;
      ++m;
      for (int e = 0; e < kDv; ++e)
        r.vmax[a] = std::max(r.vmax[a], std::fabs(static_cast<double>(rows[static_cast<size_t>(sel[i]) * kDk + e])));
    }
    const bool all_heads = static_cast<int64_t>(m) * H * n <= 400000;
    for (int h = 0; h < H; ++h) {
      if (!all_heads && h != 0 && h != 1 && h != H / 2 && h != H - 1) continue;
      const float* qh = &q[(static_cast<size_t>(a) * H + h) * kDk];
      double mx = -std::numeric_limits<double>::infinity();
      std::vector<double> s;
      s.reserve(m);
      for (int i = 0; i < K; ++i) {
        if (sel[i] < 0) continue;
        const float* kr = &rows[static_cast<size_t>(sel[i]) * kDk];
        double dot = 0;
        for (int e = 0; e < kDk; ++e) dot += static_cast<double>(qh[e]) * kr[e];
        s.push_back(dot * c.scale);
        mx = std::max(mx, s.back());
      }
      double lse = -std::numeric_limits<double>::infinity();
      if (m > 0) {
        double sum = 0;
        for (double x : s) sum += std::exp(x - mx);
        lse = mx + std::log(sum);
      }
      r.lse[static_cast<size_t>(a) * H + h] = lse;
    }
  }
  return r;
}

// Compares the GPU results (out [tokens][heads][512] bf16, lse [tokens][heads]) on the reference's tokens.
void compare(const MlaCase& c, const Reference& r, const std::vector<uint16_t>& got_out,
             const std::vector<float>& got_lse, Stats& st) {
  const int H = c.heads;
  for (size_t a = 0; a < r.toks.size(); ++a) {
    const int t = r.toks[a];
    for (int h = 0; h < H; ++h) {
      for (int e = 0; e < kDv; ++e) {
        const double ref = r.out[(a * H + h) * kDv + e];
        const float g = from_bf16(got_out[(static_cast<size_t>(t) * H + h) * kDv + e]);
        st.check(g, ref, 1e-2 * std::fabs(ref) + 4e-3 * r.vmax[a] + 1e-6, "out", t, h, e);
      }
      const double lse = r.lse[a * H + h];
      if (!std::isnan(lse))
        st.check(got_lse[static_cast<size_t>(t) * H + h], lse, 1e-3 + 1e-4 * std::fabs(lse), "lse", t, h, -1);
      else if (std::isnan(got_lse[static_cast<size_t>(t) * H + h]))
        st.check(got_lse[static_cast<size_t>(t) * H + h], 0.0, 1.0, "lse (written)", t, h, -1);
    }
  }
}

constexpr int kGuardRows = 64;  // poisoned (token, head) rows after the end of out and lse

struct GpuRun {
  DeviceBuffer q, kv, idx, out, lse;
  cuda::SparseMlaParams p;
  int64_t guard_touched = 0;  // guard elements the last run() changed (must stay 0)
  GpuRun(const MlaCase& c, const MlaData& d) {
    q = DeviceBuffer::from(d.q);
    kv = DeviceBuffer::from(d.kv);
    idx = DeviceBuffer::from(d.idx.empty() ? std::vector<int32_t>{0} : d.idx);
    out = DeviceBuffer((static_cast<size_t>(c.tokens) * c.heads + kGuardRows) * kDv * 2);
    lse = DeviceBuffer((static_cast<size_t>(c.tokens) * c.heads + kGuardRows) * 4);
    p.q = q.data();
    p.kv = kv.data();
    p.kv_stride = c.kv_stride;
    p.indices = idx.as<int32_t>();
    p.num_selected = c.selected;
    p.out = out.data();
    p.lse = lse.as<float>();
    p.tokens = c.tokens;
    p.heads = c.heads;
    p.scale = c.scale;
  }
  // Poisons the outputs (and their guards), runs with `splits` (0 = automatic) and kernel `variant`,
  // with a caller workspace (poisoned too) when `use_ws`, returns out and lse; counts the changed
  // guard elements in guard_touched.
  void run(int splits, std::vector<uint16_t>* o, std::vector<float>* l, int variant = 0, bool use_ws = false) {
    out.fill_bytes(0xFF);  // bf16 0xFFFF and f32 0xFFFFFFFF are NaN
    lse.fill_bytes(0xFF);
    cuda::SparseMlaParams g = p;
    g.num_splits = splits;
    g.variant = variant;
    DeviceBuffer ws;
    if (use_ws) {
      const size_t bytes = cuda::sparse_mla_workspace_bytes(g);
      ws = DeviceBuffer(std::max<size_t>(bytes, 16));
      ws.fill_bytes(0xFF);
      g.workspace = ws.data();
      g.workspace_bytes = bytes;
    }
    cuda::sparse_mla_bf16(g);
    cuda::device_synchronize();
    const size_t rows = static_cast<size_t>(p.tokens) * p.heads;
    *o = out.to_vector<uint16_t>((rows + kGuardRows) * kDv);
    *l = lse.to_vector<float>(rows + kGuardRows);
    guard_touched = 0;
    for (size_t i = rows * kDv; i < o->size(); ++i) guard_touched += (*o)[i] != 0xFFFF;
    for (size_t i = rows; i < l->size(); ++i) {
      uint32_t bits;
      std::memcpy(&bits, &(*l)[i], 4);
      guard_touched += bits != 0xFFFFFFFFu;
    }
    o->resize(rows * kDv);
    l->resize(rows);
  }
};

std::string name(const MlaCase& c) {
  std::ostringstream o;
  o << "T=" << c.tokens << " H=" << c.heads << " K=" << c.selected << " keys=" << c.keys << " stride=" << c.kv_stride
    << " scale=" << c.scale;
  return o.str();
}

TEST(CudaSparseMla, SmallShapes) {
  REQUIRE_GPU();
  XorShift rng(2024);
  const MlaCase cases[] = {
      {1, 8, 1, 1000, 576, 0.25f, -1},       {2, 20, 7, 5000, 576, 0.25f, 1},
      {5, 64, 100, 50000, 576, 0.25f, 3},    {77, 128, 2048, 50000, 576, 0.25f, 10},
      {1, 128, 2048, 50000, 576, 0.25f, -1}, {2, 64, 2048, 20000, 640, 0.0625f, -1},
      {5, 20, 2048, 3000, 576, 0.25f, 0},    {77, 8, 100, 1000, 576, 0.25f, 40},
      {77, 20, 7, 500, 576, 0.13523f, 2},    {5, 128, 1, 100, 576, 0.25f, -1},
      {1, 64, 7, 100, 576, 0.25f, -1},       {2, 128, 100, 300, 584, 0.25f, 0},
      {77, 64, 2048, 50000, 576, 0.25f, 76}, {1, 20, 2048, 50000, 576, 0.25f, -1},
      {5, 8, 2048, 2048, 576, 0.25f, 4},     {1, 64, 100, 2000, 576, 0.25f, 0},
      {3, 33, 130, 4000, 576, 0.25f, -1},    {2, 100, 1000, 8000, 576, 0.25f, -1},
      // every head count around the 32-head block (1, 16, 24, 32, 33), few keys (many repeats),
      // selections not a multiple of 32 or 64, an all -1 token
      {7, 1, 300, 200, 576, 0.25f, 6},       {9, 16, 2048, 3000, 576, 0.25f, 1},
      {4, 24, 1000, 50, 576, 0.25f, 3},      {6, 32, 2048, 100000, 584, 0.25f, 0},
      {3, 32, 33, 20, 576, 0.25f, -1},       {5, 33, 2048, 4000, 576, 0.0625f, 2},
      {11, 20, 1999, 700, 576, 0.25f, 5},    {2, 24, 31, 10, 576, 0.25f, 1}};
  for (const MlaCase& c : cases) {
    const MlaData d = make_data(c, rng);
    GpuRun gpu(c, d);
    std::vector<int> toks(c.tokens);
    for (int t = 0; t < c.tokens; ++t) toks[t] = t;
    const Reference ref = reference(c, d, toks);
    // (splits, variant, caller workspace): automatic, direct (the wgmma kernel), split + combine
    // (allocated and caller workspace), the mma.sync kernels: deep pipeline (variant 1: heads > 32
    // take the 64-row-tile kernel) direct and automatic, and the 64-row-tile kernel direct (variant 3).
    const int runs[][3] = {{0, 0, 0}, {1, 0, 0}, {3, 0, 0}, {3, 0, 1}, {0, 0, 1},
                           {1, 1, 0}, {0, 1, 1}, {1, 3, 0}, {0, 3, 0}};
    for (const auto& r : runs) {
      const int splits = r[0], variant = r[1];
      const bool use_ws = r[2] != 0;
      std::vector<uint16_t> out;
      std::vector<float> lse;
      gpu.run(splits, &out, &lse, variant, use_ws);
      Stats st;
      compare(c, ref, out, lse, st);
      std::printf("[cuda-ops] sparse MLA %s splits=%d variant=%d ws=%d: max|err| %.3g, max err/tol %.3g\n",
                  name(c).c_str(), splits, variant, use_ws ? 1 : 0, st.max_abs, st.max_ratio);
      EXPECT_TRUE(st.bad == 0) << "sparse MLA " << name(c) << " splits=" << splits << " variant=" << variant
                               << " ws=" << use_ws << ": " << st.bad << " of " << st.checked << " bad\n"
                               << st.first.str();
      EXPECT_TRUE(gpu.guard_touched == 0) << "sparse MLA " << name(c) << " splits=" << splits
                                          << " variant=" << variant << ": wrote " << gpu.guard_touched
                                          << " guard elements past the last head";
    }
  }
}

// The wgmma prefill kernel: one split, any head count (groups of 64 heads, the last one padded with
// zero Q rows whose outputs are not stored). Each case runs with variant 2 and 1 forced split,
// variant 2 with automatic splits (variant 2 then means one split) and the default variant with 1
// split (which dispatches to the wgmma kernel). Head counts 64 and 128 (no padding) and 1, 20, 24,
// 33, 100, 127 (padded last group: 63, 44, 40, 31, 28, 1 padding rows); single-token cases put the
// padding rows of the only token right on the guard.
TEST(CudaSparseMla, WgmmaVariant) {
  REQUIRE_GPU();
  XorShift rng(4242);
  const MlaCase cases[] = {
      {3, 64, 2048, 50000, 576, 0.25f, 1},    {2, 128, 2048, 50000, 584, 0.25f, -1},
      {5, 64, 1999, 5000, 576, 0.25f, 2},     {4, 128, 1999, 3000, 584, 0.13523f, 0},
      {6, 64, 33, 100, 576, 0.25f, 5},        {3, 128, 33, 40, 640, 0.0625f, -1},
      {5, 128, 1, 10, 576, 0.25f, -1},        {2, 64, 64, 200, 576, 0.25f, -1},
      {7, 64, 130, 4000, 576, 0.25f, 6},      {77, 128, 300, 2000, 576, 0.25f, 76},
      {150, 64, 200, 900, 584, 0.25f, 149},
      // padded head groups
      {3, 20, 2048, 50000, 576, 0.25f, 1},    {1, 20, 2048, 50000, 584, 0.25f, -1},
      {5, 20, 1999, 3000, 640, 0.13523f, 0},  {77, 20, 300, 2000, 576, 0.25f, 76},
      {1, 20, 130, 500, 584, 0.25f, 0},       {4, 24, 2048, 20000, 584, 0.25f, 3},
      {6, 24, 33, 40, 576, 0.0625f, 2},       {2, 24, 1, 10, 640, 0.25f, -1},
      {5, 33, 1999, 4000, 576, 0.25f, 4},     {3, 33, 130, 4000, 584, 0.25f, -1},
      {1, 33, 64, 100, 640, 0.25f, -1},       {2, 100, 500, 2000, 576, 0.25f, 0},
      {5, 100, 1999, 8000, 584, 0.13523f, 3}, {1, 100, 33, 50, 640, 0.25f, -1},
      {7, 1, 300, 200, 576, 0.25f, 6},        {2, 127, 2048, 30000, 576, 0.25f, -1},
      {40, 24, 1000, 3000, 576, 0.25f, 39}};
  for (const MlaCase& c : cases) {
    const MlaData d = make_data(c, rng);
    GpuRun gpu(c, d);
    std::vector<int> toks(c.tokens);
    for (int t = 0; t < c.tokens; ++t) toks[t] = t;
    const Reference ref = reference(c, d, toks);
    const int runs[][2] = {{1, 2}, {0, 2}, {1, 0}};  // (splits, variant)
    for (const auto& r : runs) {
      const int splits = r[0], variant = r[1];
      std::vector<uint16_t> out;
      std::vector<float> lse;
      gpu.run(splits, &out, &lse, variant);
      Stats st;
      compare(c, ref, out, lse, st);
      std::printf("[cuda-ops] sparse MLA %s splits=%d variant=%d (wgmma): max|err| %.3g, max err/tol %.3g\n",
                  name(c).c_str(), splits, variant, st.max_abs, st.max_ratio);
      EXPECT_TRUE(st.bad == 0) << "sparse MLA " << name(c) << " splits=" << splits << " variant=" << variant
                               << " (wgmma): " << st.bad << " of " << st.checked << " bad\n"
                               << st.first.str();
      EXPECT_TRUE(gpu.guard_touched == 0) << "sparse MLA " << name(c) << " splits=" << splits
                                          << " variant=" << variant << " (wgmma): wrote " << gpu.guard_touched
                                          << " guard elements past the last head";
    }
  }
  // Nothing selected (num_selected 0): out 0 and lse -inf for every head, the guard untouched.
  for (int heads : {20, 64, 100, 128}) {
    const MlaCase c{3, heads, 0, 10, 576, 0.25f, -1};
    const MlaData d = make_data(c, rng);
    GpuRun gpu(c, d);
    std::vector<uint16_t> out;
    std::vector<float> lse;
    gpu.run(1, &out, &lse, /*variant=*/2);
    int64_t bad = 0;
    for (uint16_t v : out) bad += v != 0 && v != 0x8000;  // +0 or -0
    for (float v : lse) bad += !(std::isinf(v) && v < 0);
    EXPECT_TRUE(bad == 0) << "sparse MLA num_selected 0 heads " << heads << " variant=2: " << bad << " bad values";
    EXPECT_TRUE(gpu.guard_touched == 0) << "sparse MLA num_selected 0 heads " << heads << " variant=2: wrote "
                                        << gpu.guard_touched << " guard elements";
  }
  // Variant 2 with more than one split forced is an error (before anything is launched).
  {
    const MlaCase c{2, 20, 300, 100, 576, 0.25f, -1};
    const MlaData d = make_data(c, rng);
    GpuRun gpu(c, d);
    cuda::SparseMlaParams g = gpu.p;
    g.variant = 2;
    g.num_splits = 3;
    bool threw = false;
    try {
      cuda::sparse_mla_bf16(g);
    } catch (const Error&) {
      threw = true;
    }
    EXPECT_TRUE(threw) << "variant 2 with num_splits 3";
  }
}

TEST(CudaSparseMla, RejectsBadArguments) {
  // Validation happens before any CUDA call, so this runs without a GPU too.
  cuda::SparseMlaParams ok;
  ok.q = ok.kv = ok.out = reinterpret_cast<void*>(uintptr_t{256});
  ok.indices = reinterpret_cast<const int32_t*>(uintptr_t{256});
  ok.tokens = 1;
  ok.heads = 8;
  ok.num_selected = 16;
  auto throws = [](cuda::SparseMlaParams p) {
    try {
      cuda::sparse_mla_bf16(p);
    } catch (const Error&) {
      return true;
    }
    return false;
  };
  cuda::SparseMlaParams p = ok;
  p.heads = 129;
  EXPECT_TRUE(throws(p)) << "heads 129";
  p = ok;
  p.heads = 0;
  EXPECT_TRUE(throws(p)) << "heads 0";
  p = ok;
  p.dim_k = 512;
  EXPECT_TRUE(throws(p)) << "dim_k 512";
  p = ok;
  p.num_selected = 2049;
  EXPECT_TRUE(throws(p)) << "num_selected 2049";
  p = ok;
  p.kv_stride = 580;
  EXPECT_TRUE(throws(p)) << "kv_stride 580";
  p = ok;
  p.q = nullptr;
  EXPECT_TRUE(throws(p)) << "null q";
  p = ok;
  p.kv = reinterpret_cast<void*>(uintptr_t{258});
  EXPECT_TRUE(throws(p)) << "misaligned kv";
  p = ok;
  p.variant = 4;
  EXPECT_TRUE(throws(p)) << "variant 4";
  p = ok;
  p.variant = -1;
  EXPECT_TRUE(throws(p)) << "variant -1";
  p = ok;
  p.variant = 2;  // valid (the wgmma kernel serves heads 8); the argument checks still apply
  p.kv_stride = 580;
  EXPECT_TRUE(throws(p)) << "variant 2, kv_stride 580";
  p = ok;
  p.variant = 2;  // the wgmma kernel runs one split: forcing 3 (of 32 tiles) is an error
  p.num_selected = 2048;
  p.num_splits = 3;
  EXPECT_TRUE(throws(p)) << "variant 2, num_splits 3";
  p.num_splits = 0;  // automatic means one split with variant 2: no workspace
  EXPECT_EQ(cuda::sparse_mla_workspace_bytes(p), size_t{0});
  p = ok;
  p.variant = 3;
  p.kv_stride = 580;
  EXPECT_TRUE(throws(p)) << "variant 3, kv_stride 580";
  p = ok;
  p.variant = 2;
  p.heads = 64;
  p.out = reinterpret_cast<void*>(uintptr_t{264});
  EXPECT_TRUE(throws(p)) << "variant 2, misaligned out";
  // Forced splits: the plan needs no device query, so these run without a GPU too.
  p = ok;
  p.num_splits = 1;
  EXPECT_EQ(cuda::sparse_mla_workspace_bytes(p), size_t{0});
  p.num_splits = 3;  // 16 selected = one 64-row tile: capped to 1 split
  EXPECT_EQ(cuda::sparse_mla_workspace_bytes(p), size_t{0});
  p.num_selected = 2048;
  p.tokens = 2;
  p.heads = 20;
  p.num_splits = 3;  // 32 tiles: 11 per split, 3 splits
  EXPECT_EQ(cuda::sparse_mla_workspace_bytes(p), size_t{2} * 20 * 3 * 513 * 4);
  p.workspace = reinterpret_cast<void*>(uintptr_t{256});
  p.workspace_bytes = size_t{2} * 20 * 3 * 513 * 4 - 4;
  EXPECT_TRUE(throws(p)) << "workspace too small";
  p.workspace = reinterpret_cast<void*>(uintptr_t{260});
  p.workspace_bytes = size_t{1} << 20;
  EXPECT_TRUE(throws(p)) << "misaligned workspace";
  p = ok;
  p.tokens = 0;  // nothing to do: returns without touching the device
  EXPECT_TRUE(!throws(p)) << "tokens 0";
  EXPECT_EQ(cuda::sparse_mla_workspace_bytes(p), size_t{0});
}

// Real shapes: a 4096-token prefill chunk at the end of a 200K context and single-token decode,
// heads 20 (the paper's 30B), 64 (GLM-5), 128 (DeepSeek-V3.2), 2048 selected rows each.
TEST(CudaSparseMla, RealShapes) {
  REQUIRE_GPU();
  const int T = 4096, keys = 200000, K = 2048, Hmax = 128;
  XorShift rng(77);
  MlaData d;
  d.q = random_bf16(static_cast<size_t>(T) * Hmax * kDk, rng);  // any prefix is a [T][H][576] tensor
  d.kv = random_bf16(static_cast<size_t>(keys) * kDk, rng);
  d.idx.resize(static_cast<size_t>(T) * K);
  for (int t = 0; t < T; ++t) {
    const int pos = keys - T + t;  // causal: rows 0..pos
    for (int i = 0; i < K; ++i) d.idx[static_cast<size_t>(t) * K + i] = rng.below(pos + 1);
  }
  DeviceBuffer dq = DeviceBuffer::from(d.q), dkv = DeviceBuffer::from(d.kv), didx = DeviceBuffer::from(d.idx);
  DeviceBuffer dout(static_cast<size_t>(T) * Hmax * kDv * 2), dlse(static_cast<size_t>(T) * Hmax * 4);
  for (int H : {20, 64, 128}) {
    const MlaCase c{T, H, K, keys, kDk, 0.25f, -1};  // peaky logits: a sharper check
    cuda::SparseMlaParams p;
    p.q = dq.data();
    p.kv = dkv.data();
    p.indices = didx.as<int32_t>();
    p.num_selected = K;
    p.out = dout.data();
    p.lse = dlse.as<float>();
    p.tokens = T;
    p.heads = H;
    p.scale = c.scale;
    dout.fill_bytes(0xFF);
    dlse.fill_bytes(0xFF);
    cuda::sparse_mla_bf16(p);
    cuda::device_synchronize();
    // A few tokens across the chunk (the q prefix viewed as [T][H][576]), against the CPU.
    const Reference ref = reference(c, d, {0, 1, 2047, 4095});
    auto check_outputs = [&](Stats& st) {
      compare(c, ref, dout.to_vector<uint16_t>(static_cast<size_t>(T) * H * kDv),
              dlse.to_vector<float>(static_cast<size_t>(T) * H), st);
    };
    {
      Stats st;
      check_outputs(st);
      std::printf("[cuda-ops] sparse MLA prefill T=%d H=%d: max|err| %.3g, max err/tol %.3g (4 tokens checked)\n", T,
                  H, st.max_abs, st.max_ratio);
      EXPECT_TRUE(st.bad == 0) << "prefill H=" << H << ": " << st.bad << " of " << st.checked << " bad\n"
                               << st.first.str();
    }
    // 0: default (the wgmma kernel here: one split); 1: mma.sync deep pipeline (heads <= 32; above,
    // the same kernel as 3); 2: wgmma forced; 3: mma.sync with 64-row tiles (the previous default).
    for (int variant : {0, 1, 2, 3}) {
      if (variant == 1 && H > 32) continue;  // the deep pipeline is for heads <= 32
      cuda::SparseMlaParams g = p;
      g.variant = variant;
      if (variant != 0) {
        dout.fill_bytes(0xFF);
        dlse.fill_bytes(0xFF);
        cuda::sparse_mla_bf16(g);
        cuda::device_synchronize();
        Stats st;
        check_outputs(st);
        std::printf("[cuda-ops] sparse MLA prefill T=%d H=%d variant=%d: max|err| %.3g, max err/tol %.3g\n", T, H,
                    variant, st.max_abs, st.max_ratio);
        EXPECT_TRUE(st.bad == 0) << "prefill H=" << H << " variant=" << variant << ": " << st.bad << " of "
                                 << st.checked << " bad\n"
                                 << st.first.str();
      }
      const double ms = cuda::median_ms([&] { cuda::sparse_mla_bf16(g); });
      const double tflop = 2.0 * T * H * static_cast<double>(K) * (kDk + kDv) * 1e-12;
      const double tflops = tflop / (ms * 1e-3);
      std::printf("[cuda-ops] sparse MLA prefill T=%d H=%d K=%d cache=%d variant=%d: %.3f ms, %.1f TFLOP/s "
                  "(%.0f %% of %.0f), %.0f GB/s of gathered rows\n",
                  T, H, K, keys, variant, ms, tflops, 100.0 * tflops / bf16_peak_tflops(), bf16_peak_tflops(),
                  1.0 * T * K * kDk * 2 * 1e-9 / (ms * 1e-3));
    }
  }
  // Decode: the last token of the chunk alone, automatic splits vs one block per head group.
  for (int H : {20, 64, 128}) {
    cuda::SparseMlaParams p;
    p.q = static_cast<const char*>(dq.data()) + static_cast<size_t>(T - 1) * H * kDk * 2;
    p.kv = dkv.data();
    p.indices = didx.as<int32_t>() + static_cast<size_t>(T - 1) * K;
    p.num_selected = K;
    p.out = dout.data();
    p.lse = dlse.as<float>();
    p.tokens = 1;
    p.heads = H;
    p.scale = 0.0625f;
    const double flop = 2.0 * H * static_cast<double>(K) * (kDk + kDv);
    // Automatic splits with a caller workspace (no allocation per call: the engine's and the
    // CUDA-graph path), automatic splits allocating per call, one block per head group.
    for (int mode : {0, 1, 2}) {
      cuda::SparseMlaParams g = p;
      g.num_splits = mode == 2 ? 1 : 0;
      DeviceBuffer ws;
      if (mode == 0) {
        g.workspace_bytes = cuda::sparse_mla_workspace_bytes(g);
        ws = DeviceBuffer(std::max<size_t>(g.workspace_bytes, 16));
        g.workspace = ws.data();
      }
      const double ms = cuda::median_ms([&] { cuda::sparse_mla_bf16(g); });
      const char* how = mode == 0 ? "auto, caller workspace" : mode == 1 ? "auto, allocated" : "1";
      std::printf("[cuda-ops] sparse MLA decode T=1 H=%d K=%d splits=%s: %.1f us, %.2f TFLOP/s, %.0f GB/s of rows\n",
                  H, K, how, ms * 1e3, flop / (ms * 1e-3) * 1e-12, 1.0 * K * kDk * 2 * 1e-9 / (ms * 1e-3));
    }
  }
}

}  // namespace
}  // namespace indexcache
