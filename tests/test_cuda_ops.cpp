// CUDA DSA ops (src/backend/cuda) against the CPU backend ops (src/backend/cpu/kernels.h) on fresh
// random inputs from fixed seeds. Device outputs are poisoned before each run (NaN for floats,
// 0x7F7F7F7F for indices) so unwritten elements show; NaN never passes.
//  - indexer / attention: per-element tolerance kSafety * eps * sqrt(terms) * magnitude, where the
//    magnitude bounds sum|terms| (Cauchy-Schwarz on the dot products); -inf must match exactly.
//  - topk on identical scores: exactly the CPU's indices, in the CPU's order (same tie-breaking).
//  - indexer -> topk pipeline: GPU and CPU selections compared as sets; an element may be swapped
//    only for one whose CPU score lies within the scores' rounding tolerance of the k-th score.
// Without a CUDA device every test is skipped (GTEST_SKIP) so CI passes on GPU-less machines.
// Real-shape tests print max errors and timings (median of 10, CUDA events) prefixed "[cuda-ops]".
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/device_buffer.h"
#include "cuda_test_util.h"

namespace indexcache {
namespace {

using cuda::DeviceBuffer;
using namespace cuda_test;

constexpr double kEps = std::numeric_limits<float>::epsilon();
constexpr double kSafety = 8.0;

// ---------------------------------------------------------------- indexer

struct IndexerCase {
  int tokens, keys, heads, dim;
  int pad;  // extra scores_stride
};

struct IndexerData {
  std::vector<float> q, w, k;
  std::vector<int32_t> pos;
  float scale;
};

IndexerData make_indexer_data(const IndexerCase& c, std::mt19937& rng) {
  IndexerData d;
  d.q = uniform(static_cast<size_t>(c.tokens) * c.heads * c.dim, rng);
  d.w = uniform(static_cast<size_t>(c.tokens) * c.heads, rng);
  d.k = uniform(static_cast<size_t>(c.keys) * c.dim, rng);
  d.scale = 1.0f / std::sqrt(static_cast<float>(c.dim));
  std::uniform_int_distribution<int> any(0, c.keys - 1);
  d.pos.resize(c.tokens);
  for (int t = 0; t < c.tokens; ++t)  // mostly a causal chunk at the end, some random positions
    d.pos[t] = (t % 3 == 2) ? any(rng) : std::max(0, c.keys - c.tokens + t);
  return d;
}

// Runs GPU and CPU indexer, checks, returns the CPU scores and per-element tolerances.
void check_indexer(const IndexerCase& c, const IndexerData& d, std::vector<float>* cpu_out,
                   std::vector<float>* tol_out, std::vector<float>* gpu_out, double* ms) {
  const int64_t stride = c.keys + c.pad;
  IndexerScoreParams p;
  p.tokens = c.tokens;
  p.keys = c.keys;
  p.heads = c.heads;
  p.head_dim = c.dim;
  p.scale = d.scale;
  p.scores_stride = stride;
  std::vector<float> ref(static_cast<size_t>(c.tokens) * stride, 0.0f);
  p.q = d.q.data();
  p.w = d.w.data();
  p.k = d.k.data();
  p.positions = d.pos.data();
  p.scores = ref.data();
  cpu::indexer_scores(p);

  DeviceBuffer dq = DeviceBuffer::from(d.q), dw = DeviceBuffer::from(d.w), dk = DeviceBuffer::from(d.k);
  DeviceBuffer dpos = DeviceBuffer::from(d.pos);
  DeviceBuffer dsc(ref.size() * sizeof(float));
  dsc.fill_bytes(0xFF);  // NaN
  IndexerScoreParams g = p;
  g.q = dq.as<float>();
  g.w = dw.as<float>();
  g.k = dk.as<float>();
  g.positions = dpos.as<int32_t>();
  g.scores = dsc.as<float>();
  cuda::indexer_scores(g);
  cuda::device_synchronize();
  const std::vector<float> got = dsc.to_vector<float>(ref.size());
  if (ms) *ms = cuda::median_ms([&] { cuda::indexer_scores(g); });

  // Tolerance: |w_h| * |relu(q_h . k)| <= |w_h| * ||q_h|| * ||k|| bounds each head's term.
  std::vector<double> qmag(static_cast<size_t>(c.tokens));
  for (int t = 0; t < c.tokens; ++t) {
    double s = 0;
    for (int h = 0; h < c.heads; ++h)
      s += std::fabs(d.w[static_cast<size_t>(t) * c.heads + h]) *
           norm2(&d.q[(static_cast<size_t>(t) * c.heads + h) * c.dim], c.dim);
    qmag[t] = s * d.scale;
  }
  std::vector<double> kmag(c.keys);
  for (int s = 0; s < c.keys; ++s) kmag[s] = norm2(&d.k[static_cast<size_t>(s) * c.dim], c.dim);
  const double terms = static_cast<double>(c.heads) * c.dim;
  FloatCheck fc;
  if (tol_out) tol_out->assign(ref.size(), 0.0f);
  for (int t = 0; t < c.tokens; ++t)
    for (int s = 0; s < c.keys; ++s) {
      const size_t i = static_cast<size_t>(t) * stride + s;
      const double tol = kSafety * kEps * std::sqrt(terms) * qmag[t] * kmag[s];
      if (tol_out) (*tol_out)[i] = static_cast<float>(tol);
      fc.check(got[i], ref[i], tol, t, s);
    }
  std::printf("[cuda-ops] indexer T=%d S=%d H=%d D=%d: max|err| %.3g, max err/tol %.3g\n", c.tokens,
              c.keys, c.heads, c.dim, fc.max_abs, fc.max_ratio);
  EXPECT_TRUE(fc.bad == 0) << "indexer T=" << c.tokens << " S=" << c.keys << " H=" << c.heads
                           << " D=" << c.dim << ": " << fc.summary();
  if (cpu_out) *cpu_out = std::move(ref);
  if (gpu_out) *gpu_out = got;
}

TEST(CudaOps, IndexerSmallShapes) {
  REQUIRE_GPU();
  std::mt19937 rng(101);
  const IndexerCase cases[] = {{1, 1, 1, 32, 0},   {5, 77, 3, 64, 3},     {33, 130, 4, 128, 0},
                               {17, 1000, 32, 64, 1}, {40, 257, 1, 128, 5}, {3, 65, 3, 96, 0},
                               {70, 31, 4, 32, 2}};
  for (const IndexerCase& c : cases) {
    const IndexerData d = make_indexer_data(c, rng);
    check_indexer(c, d, nullptr, nullptr, nullptr, nullptr);
  }
}

// ---------------------------------------------------------------- topk

enum class ScoreKind { kUniform, kTied, kWithNanAndInf };

std::vector<float> make_scores(int rows, int cols, ScoreKind kind, std::mt19937& rng) {
  std::vector<float> s = uniform(static_cast<size_t>(rows) * cols, rng, -4.0f, 4.0f);
  std::uniform_int_distribution<int> pick(0, 99);
  for (float& x : s) {
    if (kind == ScoreKind::kTied) x = std::round(x);  // 9 distinct values: ties everywhere
    if (kind == ScoreKind::kWithNanAndInf) {
      const int r = pick(rng);
      if (r < 3) x = std::numeric_limits<float>::quiet_NaN();
      else if (r < 8) x = -kInf;
      else if (r < 10) x = kInf;
      else if (r < 20) x = 0.5f;
    }
  }
  return s;
}

// GPU topk on the given host scores; exact comparison with the CPU op. Returns median ms if asked.
void check_topk_exact(const std::vector<float>& scores, int rows, int64_t stride,
                      const std::vector<int32_t>& valid, int k, const std::string& label,
                      double* ms = nullptr) {
  TopkParams p;
  p.scores = scores.data();
  p.scores_stride = stride;
  p.valid = valid.data();
  p.tokens = rows;
  p.k = k;
  std::vector<int32_t> ref(static_cast<size_t>(rows) * k, -7);
  p.indices = ref.data();
  cpu::topk(p);

  DeviceBuffer ds = DeviceBuffer::from(scores), dv = DeviceBuffer::from(valid);
  DeviceBuffer di(ref.size() * sizeof(int32_t));
  di.fill_bytes(kPoisonByte);
  TopkParams g = p;
  g.scores = ds.as<float>();
  g.valid = dv.as<int32_t>();
  g.indices = di.as<int32_t>();
  cuda::topk(g);
  cuda::device_synchronize();
  const std::vector<int32_t> got = di.to_vector<int32_t>(ref.size());
  if (ms) *ms = cuda::median_ms([&] { cuda::topk(g); });
  int64_t bad = 0;
  std::ostringstream first;
  for (int t = 0; t < rows; ++t)
    for (int i = 0; i < k; ++i) {
      const size_t j = static_cast<size_t>(t) * k + i;
      if (got[j] != ref[j] && bad++ < 5)
        first << "  row " << t << " (valid " << valid[t] << ") pos " << i << ": got " << got[j]
              << " want " << ref[j] << "\n";
    }
  EXPECT_EQ(bad, 0) << label << ": " << bad << " index mismatches\n" << first.str();
}

TEST(CudaOps, TopkSmallShapes) {
  REQUIRE_GPU();
  std::mt19937 rng(202);
  struct Case { int rows, cols, k; ScoreKind kind; };
  const Case cases[] = {{4, 1, 1, ScoreKind::kUniform},          {9, 100, 1, ScoreKind::kTied},
                        {7, 50, 16, ScoreKind::kUniform},        {7, 300, 16, ScoreKind::kWithNanAndInf},
                        {6, 1000, 256, ScoreKind::kTied},        {5, 3001, 256, ScoreKind::kUniform},
                        {6, 5000, 2048, ScoreKind::kUniform},    {5, 4097, 2048, ScoreKind::kTied},
                        {4, 2048, 2048, ScoreKind::kWithNanAndInf}, {3, 9999, 1000, ScoreKind::kWithNanAndInf}};
  for (const Case& c : cases) {
    const int64_t stride = c.cols + 3;
    const std::vector<float> scores = make_scores(c.rows, static_cast<int>(stride), c.kind, rng);
    std::vector<int32_t> valid(c.rows);
    std::uniform_int_distribution<int> any(0, c.cols);
    for (int t = 0; t < c.rows; ++t) {  // fewer than k, exactly k, all, random
      const int r = t % 4;
      valid[t] = r == 0 ? std::max(0, c.k - 1 - t) : r == 1 ? std::min(c.k, c.cols) : r == 2 ? c.cols : any(rng);
    }
    check_topk_exact(scores, c.rows, stride, valid, c.k,
                     "topk rows=" + std::to_string(c.rows) + " cols=" + std::to_string(c.cols) +
                         " k=" + std::to_string(c.k) + " kind=" + std::to_string(static_cast<int>(c.kind)));
  }
}

TEST(CudaOps, TopkLargeRows) {
  REQUIRE_GPU();
  std::mt19937 rng(303);
  const int rows = 4, cols = 256 * 1024, k = 2048;
  for (ScoreKind kind : {ScoreKind::kUniform, ScoreKind::kTied}) {
    const std::vector<float> scores = make_scores(rows, cols, kind, rng);
    const std::vector<int32_t> valid = {cols, cols - 1, 100000, 2047};
    double ms = 0;
    check_topk_exact(scores, rows, cols, valid, k, "topk 256K", &ms);
    std::printf("[cuda-ops] topk %d rows x 256K candidates, k=%d (%s): %.3f ms\n", rows, k,
                kind == ScoreKind::kTied ? "tied" : "uniform", ms);
  }
}

// ---------------------------------------------------------------- sparse attention

struct AttnCase {
  int tokens, heads, kv_heads, dk, dv, selected, seq;
  bool shared_kv;  // V is the first dv dims of the K rows (absorbed MLA latent)
};

void check_attention(const AttnCase& c, std::mt19937& rng, double* ms) {
  // Padded strides: q [T][H][dk + 3]; K rows of kv_heads * dk_pitch; out [T][H][dv + 1].
  const int64_t q_hs = c.dk + 3, q_ts = q_hs * c.heads;
  const int64_t k_hs = c.dk + 1, k_ts = k_hs * c.kv_heads;
  const int64_t v_hs = c.shared_kv ? k_hs : c.dv + 2, v_ts = c.shared_kv ? k_ts : v_hs * c.kv_heads;
  const int64_t o_hs = c.dv + 1, o_ts = o_hs * c.heads;
  const std::vector<float> q = uniform(static_cast<size_t>(c.tokens) * q_ts, rng);
  const std::vector<float> k = uniform(static_cast<size_t>(c.seq) * k_ts, rng);
  const std::vector<float> v =
      c.shared_kv ? std::vector<float>{} : uniform(static_cast<size_t>(c.seq) * v_ts, rng);
  const std::vector<float>& vv = c.shared_kv ? k : v;
  std::vector<int32_t> idx(static_cast<size_t>(c.tokens) * c.selected);
  std::vector<int32_t> all(c.seq);
  std::iota(all.begin(), all.end(), 0);
  for (int t = 0; t < c.tokens; ++t) {
    std::shuffle(all.begin(), all.end(), rng);
    for (int i = 0; i < c.selected; ++i) {
      int32_t j = i < c.seq ? all[i] : -1;
      if (t % 4 == 1 && i % 5 == 3) j = -1;  // holes
      if (t % 7 == 6) j = -1;                 // a row with nothing selected
      idx[static_cast<size_t>(t) * c.selected + i] = j;
    }
  }
  SparseAttentionParams p;
  p.q_token_stride = q_ts;
  p.q_head_stride = q_hs;
  p.k_token_stride = k_ts;
  p.k_head_stride = k_hs;
  p.v_token_stride = v_ts;
  p.v_head_stride = v_hs;
  p.out_token_stride = o_ts;
  p.out_head_stride = o_hs;
  p.num_selected = c.selected;
  p.tokens = c.tokens;
  p.heads = c.heads;
  p.kv_heads = c.kv_heads;
  p.head_dim_k = c.dk;
  p.head_dim_v = c.dv;
  p.scale = 1.0f / std::sqrt(static_cast<float>(c.dk));
  std::vector<float> ref(static_cast<size_t>(c.tokens) * o_ts, 0.0f);
  p.q = q.data();
  p.k = k.data();
  p.v = vv.data();
  p.indices = idx.data();
  p.out = ref.data();
  cpu::sparse_attention(p);

  DeviceBuffer dq = DeviceBuffer::from(q), dk = DeviceBuffer::from(k), di = DeviceBuffer::from(idx);
  DeviceBuffer dv = c.shared_kv ? DeviceBuffer() : DeviceBuffer::from(v);
  DeviceBuffer dout(ref.size() * sizeof(float));
  dout.fill_bytes(0xFF);
  SparseAttentionParams g = p;
  g.q = dq.as<float>();
  g.k = dk.as<float>();
  g.v = c.shared_kv ? dk.as<float>() : dv.as<float>();
  g.indices = di.as<int32_t>();
  g.out = dout.as<float>();
  cuda::sparse_attention(g);
  cuda::device_synchronize();
  const std::vector<float> got = dout.to_vector<float>(ref.size());
  if (ms) *ms = cuda::median_ms([&] { cuda::sparse_attention(g); });

  // Tolerance: a score error ds moves the output by at most 2 * max|ds| * max|v|; the value sum of
  // m terms adds sqrt(m) * eps * max|v| (weights sum to 1).
  FloatCheck fc;
  const int group = c.heads / c.kv_heads;
  for (int t = 0; t < c.tokens; ++t) {
    const int32_t* sel = &idx[static_cast<size_t>(t) * c.selected];
    // Per kv head: max ||k_j|| and max |v_jd| over the selected rows, and how many there are.
    std::vector<double> kmaxs(c.kv_heads, 0.0), vmaxs(c.kv_heads, 0.0);
    int m = 0;
    for (int i = 0; i < c.selected; ++i) {
      if (sel[i] < 0) continue;
      ++m;
      for (int gk = 0; gk < c.kv_heads; ++gk) {
        kmaxs[gk] = std::max(kmaxs[gk], norm2(&k[sel[i] * k_ts + gk * k_hs], c.dk));
        for (int d = 0; d < c.dv; ++d)
          vmaxs[gk] = std::max(vmaxs[gk], std::fabs(static_cast<double>(vv[sel[i] * v_ts + gk * v_hs + d])));
      }
    }
    for (int h = 0; h < c.heads; ++h) {
      const int gk = h / group;
      const double qn = norm2(&q[t * q_ts + h * q_hs], c.dk) * p.scale;
      const double kmax = kmaxs[gk], vmax = vmaxs[gk];
      const double ds = kSafety * kEps * std::sqrt(static_cast<double>(c.dk)) * qn * kmax;
      const double tol = (2 * ds + kSafety * kEps * (std::sqrt(static_cast<double>(m)) + 4)) * vmax;
      for (int d = 0; d < c.dv; ++d) {
        const size_t i = t * o_ts + h * o_hs + d;
        fc.check(got[i], ref[i], tol, t, h, d);
      }
    }
  }
  std::printf("[cuda-ops] attention T=%d H=%d Hkv=%d Dk=%d Dv=%d K=%d: max|err| %.3g, max err/tol %.3g\n",
              c.tokens, c.heads, c.kv_heads, c.dk, c.dv, c.selected, fc.max_abs, fc.max_ratio);
  EXPECT_TRUE(fc.bad == 0) << "attention T=" << c.tokens << " H=" << c.heads << " Hkv=" << c.kv_heads
                           << " Dk=" << c.dk << " Dv=" << c.dv << " K=" << c.selected << ": " << fc.summary();
}

TEST(CudaOps, SparseAttentionSmallShapes) {
  REQUIRE_GPU();
  std::mt19937 rng(404);
  const AttnCase cases[] = {
      {3, 1, 1, 32, 32, 1, 10, false},       {5, 3, 3, 64, 32, 16, 100, false},
      {8, 4, 1, 128, 64, 37, 300, false},    {8, 32, 1, 64, 64, 256, 1000, false},
      {3, 32, 32, 128, 128, 16, 50, false},  {8, 8, 2, 96, 80, 40, 20, false},
      {7, 4, 1, 72, 64, 33, 200, true},      {2, 3, 1, 33, 17, 5, 9, false}};
  for (const AttnCase& c : cases) check_attention(c, rng, nullptr);
}

// ---------------------------------------------------------------- real shapes (+ timings)

TEST(CudaOps, RealShapeIndexerTopk) {
  REQUIRE_GPU();
  std::mt19937 rng(505);
  const IndexerCase c{64, 16384, 32, 128, 0};
  IndexerData d = make_indexer_data(c, rng);
  for (int t = 0; t < c.tokens; ++t) d.pos[t] = c.keys - c.tokens + t;  // prefill chunk at the end
  std::vector<float> ref, tol, got;
  double ms_idx = 0;
  check_indexer(c, d, &ref, &tol, &got, &ms_idx);
  double pairs = 0;
  for (int t = 0; t < c.tokens; ++t) pairs += d.pos[t] + 1;
  const double gflop = 2.0 * pairs * c.heads * c.dim * 1e-9;
  std::printf("[cuda-ops] indexer real shape T=%d S=%d H=%d D=%d: %.3f ms, %.1f GFLOP/s\n", c.tokens,
              c.keys, c.heads, c.dim, ms_idx, gflop / (ms_idx * 1e-3));

  // topk on the GPU scores vs CPU topk on the CPU scores: sets, swaps only within rounding of the
  // k-th score. Plus the exact check of the GPU op on identical scores.
  const int k = 2048;
  std::vector<int32_t> valid(c.tokens);
  for (int t = 0; t < c.tokens; ++t) valid[t] = d.pos[t] + 1;
  double ms_topk = 0;
  check_topk_exact(ref, c.tokens, c.keys, valid, k, "topk real shape", &ms_topk);
  std::printf("[cuda-ops] topk real shape %d rows x %d candidates, k=%d: %.3f ms\n", c.tokens, c.keys,
              k, ms_topk);

  TopkParams p;
  p.scores_stride = c.keys;
  p.valid = valid.data();
  p.tokens = c.tokens;
  p.k = k;
  std::vector<int32_t> cpu_sel(static_cast<size_t>(c.tokens) * k), gpu_sel(cpu_sel.size());
  p.scores = ref.data();
  p.indices = cpu_sel.data();
  cpu::topk(p);
  DeviceBuffer ds = DeviceBuffer::from(got), dv = DeviceBuffer::from(valid);
  DeviceBuffer di(gpu_sel.size() * sizeof(int32_t));
  di.fill_bytes(kPoisonByte);
  TopkParams g = p;
  g.scores = ds.as<float>();
  g.valid = dv.as<int32_t>();
  g.indices = di.as<int32_t>();
  cuda::topk(g);
  cuda::device_synchronize();
  gpu_sel = di.to_vector<int32_t>(gpu_sel.size());
  int64_t swaps = 0, bad = 0;
  std::ostringstream first;
  for (int t = 0; t < c.tokens; ++t) {
    const float* row = &ref[static_cast<size_t>(t) * c.keys];
    const float* trow = &tol[static_cast<size_t>(t) * c.keys];
    std::set<int32_t> a, b;
    for (int i = 0; i < k; ++i) {
      a.insert(gpu_sel[static_cast<size_t>(t) * k + i]);
      b.insert(cpu_sel[static_cast<size_t>(t) * k + i]);
    }
    const int32_t kth_idx = cpu_sel[static_cast<size_t>(t) * k + k - 1];
    const float kth = row[kth_idx];
    auto near_kth = [&](int32_t x) {
      if (x < 0 || x >= c.keys) return false;
      const double allowed = std::max(1e-6 * std::fabs(kth), static_cast<double>(trow[x]) + trow[kth_idx]);
      return std::fabs(static_cast<double>(row[x]) - kth) <= allowed;
    };
    if (a.size() != static_cast<size_t>(k) && bad++ < 5) first << "  row " << t << ": duplicate indices\n";
    for (int32_t x : a)
      if (!b.count(x)) {
        ++swaps;
        if (!near_kth(x) && bad++ < 5) first << "  row " << t << ": GPU picked " << x << " (score " << (x >= 0 && x < c.keys ? row[x] : NAN) << ", k-th " << kth << ")\n";
      }
    for (int32_t x : b)
      if (!a.count(x) && !near_kth(x) && bad++ < 5)
        first << "  row " << t << ": GPU missed " << x << " (score " << row[x] << ", k-th " << kth << ")\n";
  }
  std::printf("[cuda-ops] indexer->topk pipeline: %lld swaps at the k-th score boundary (allowed), %lld bad\n",
              static_cast<long long>(swaps), static_cast<long long>(bad));
  EXPECT_EQ(bad, 0) << first.str();
}

TEST(CudaOps, RealShapeMqaAttention) {
  REQUIRE_GPU();
  std::mt19937 rng(606);
  const AttnCase c{64, 16, 1, 576, 512, 2048, 16384, true};
  double ms = 0;
  check_attention(c, rng, &ms);
  const double gflop = 2.0 * c.tokens * c.heads * c.selected * (c.dk + c.dv) * 1e-9;
  // Bytes a perfect kernel must read: every selected latent row once per query.
  const double gbytes = 1.0 * c.tokens * c.selected * (c.dk + 1) * 4 * 1e-9;
  std::printf("[cuda-ops] MQA attention real shape T=%d H=%d Dk=%d Dv=%d K=%d: %.3f ms, %.1f GFLOP/s, %.1f GB/s of rows\n",
              c.tokens, c.heads, c.dk, c.dv, c.selected, ms, gflop / (ms * 1e-3), gbytes / (ms * 1e-3));
}

}  // namespace
}  // namespace indexcache
