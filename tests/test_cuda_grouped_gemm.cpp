// gpu::grouped_gemm_bf16 (the MoE experts' grouped GEMM, row ranges read from device offsets)
// against a host reference in double precision on the same bf16 values.
//  - Named corner cases: zero-row experts, a 1-row expert, counts around multiples of the 128-row
//    tile and of its 64-row half (the wgmma kernel's second warpgroup skips tiles of <= 64 rows),
//    n and k not multiples of the tiles (but of 8), padded strides, max_rows above the real row
//    count, 512 experts, every expert empty.
//  - Inputs: random bf16 values; every element the kernel must NOT read (the stride padding of x
//    and W, x rows past offsets[E]) holds a bf16 NaN, so a stray read poisons a checked output.
//  - Output poisoned with NaN first: rows outside [0, offsets[E]) and columns >= n must still hold
//    the poison afterwards (bit-exact).
//  - Tolerance per element: 1e-2 x the largest |ref| of its row (the output is rounded to bf16,
//    2^-9 relative; f32 accumulation adds far less).
//  - A CUDA graph captured once is replayed after the offsets changed on the device: the split is
//    read on the device at run time, nothing of it is baked in on the host.
//  - Bad arguments: each requirement violated once; validation happens before any CUDA call.
//  - Real shapes (glm47flash: 16384 routed rows over 64 experts, random uneven split; gate_up
//    N 3072 K 2048, down N 2048 K 1536): "[cuda-ops]" lines with the median of 10 CUDA-event-timed
//    runs, TFLOP/s of the useful work and % of the measured bf16 peak (cuda_test::bf16_peak_tflops),
//    for every kernel variant, next to the
//    same work done as one cuBLASLt call per expert (gpu::Gemm, plans cached, plus the cold first
//    pass that builds a plan per new row count).
//  - Every correctness case runs every kernel variant (0 default: wgmma 128 x 256 tiles; 1, 2:
//    mma.sync 128 x 128 and 128 x 256; 3: wgmma 128 x 128).
// Without a CUDA device the GPU tests skip.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/device_buffer.h"
#include "gpu/gemm.h"
#include "gpu/grouped_gemm.h"
#include "gpu/layer_kernels.h"
#include "indexcache/error.h"
#include "cuda_test_util.h"

namespace indexcache {
namespace {

using cuda::DeviceBuffer;
using namespace cuda_test;

constexpr uint16_t kBf16Nan = 0x7FC0;      // the NaN the test writes where nothing may be read
constexpr uint16_t kBf16Poison = 0xFFFF;   // fill_bytes(0xFF): an element nobody wrote

std::vector<int32_t> offsets_of(const std::vector<int>& counts) {
  std::vector<int32_t> off(counts.size() + 1, 0);
  for (size_t e = 0; e < counts.size(); ++e) off[e + 1] = off[e] + counts[e];
  return off;
}

// One problem: counts per expert, shapes, stride padding (elements, multiples of 8), and the slack
// of max_rows over the real row count.
struct GroupedCase {
  const char* name;
  std::vector<int> counts;
  int n, k;
  int ldx_pad = 0, ldw_pad = 0, ldy_pad = 0, wes_pad = 0;
  int slack = 0;
};

// Host inputs of a case: bf16 bits as uploaded (NaN in every element that must not be read) and the
// f32 values of the live elements, compact ([rows][k] and [E][n][k]).
struct HostProblem {
  int E = 0, total = 0, max_rows = 0, rows_alloc = 0;
  int64_t ldx = 0, ldw = 0, ldy = 0, wes = 0;
  std::vector<int32_t> off;
  std::vector<uint16_t> xbits, wbits;
  std::vector<float> xf, wf;
};

HostProblem make_problem(const GroupedCase& c, std::mt19937& rng) {
  HostProblem p;
  p.E = static_cast<int>(c.counts.size());
  p.off = offsets_of(c.counts);
  p.total = p.off[p.E];
  p.max_rows = p.total + c.slack;
  p.rows_alloc = p.max_rows + 2;  // two rows past max_rows: must stay poisoned too
  p.ldx = c.k + c.ldx_pad;
  p.ldw = c.k + c.ldw_pad;
  p.ldy = c.n + c.ldy_pad;
  p.wes = int64_t(c.n) * p.ldw + c.wes_pad;
  p.xf = uniform_bf16(size_t(p.total) * c.k, rng);
  p.wf = uniform_bf16(size_t(p.E) * c.n * c.k, rng);
  p.xbits.assign(size_t(p.rows_alloc) * p.ldx, kBf16Nan);
  for (int r = 0; r < p.total; ++r)
    for (int q = 0; q < c.k; ++q) p.xbits[size_t(r) * p.ldx + q] = to_bf16(p.xf[size_t(r) * c.k + q]);
  p.wbits.assign(size_t(p.E) * p.wes, kBf16Nan);
  for (int e = 0; e < p.E; ++e)
    for (int j = 0; j < c.n; ++j)
      for (int q = 0; q < c.k; ++q)
        p.wbits[size_t(e) * p.wes + size_t(j) * p.ldw + q] = to_bf16(p.wf[(size_t(e) * c.n + j) * c.k + q]);
  return p;
}

// Checks the downloaded y (bits, rows_alloc x ldy) against the host reference; every element
// outside rows [0, total) x columns [0, n) must still hold the poison.
void check_output(const GroupedCase& c, const HostProblem& p, const std::vector<uint16_t>& ybits,
                  const std::string& label) {
  FloatCheck fc("row", "col");
  std::vector<double> ref(c.n);
  for (int e = 0; e < p.E; ++e)
    for (int r = p.off[e]; r < p.off[e + 1]; ++r) {
      const float* xr = p.xf.data() + size_t(r) * c.k;
      double row_mag = 0;
      for (int j = 0; j < c.n; ++j) {
        const float* wr = p.wf.data() + (size_t(e) * c.n + j) * c.k;
        double s = 0;
        for (int q = 0; q < c.k; ++q) s += double(xr[q]) * wr[q];
        ref[j] = s;
        row_mag = std::max(row_mag, std::fabs(s));
      }
      for (int j = 0; j < c.n; ++j)
        fc.check(from_bf16(ybits[size_t(r) * p.ldy + j]), static_cast<float>(ref[j]), 1e-2 * row_mag + 1e-6, r, j);
    }
  int64_t touched = 0;
  for (int r = 0; r < p.rows_alloc; ++r)
    for (int64_t j = 0; j < p.ldy; ++j) {
      if (r < p.total && j < c.n) continue;
      if (ybits[size_t(r) * p.ldy + j] != kBf16Poison && touched++ < 3)
        fc.fail("written outside the output: row " + std::to_string(r) + " col " + std::to_string(j));
    }
  EXPECT_TRUE(fc.bad == 0) << label << " " << c.name << " (E=" << p.E << " rows=" << p.total << " n=" << c.n
                           << " k=" << c.k << "): " << fc.summary();
}

gpu::GroupedGemmArgs args_for(const GroupedCase& c, const HostProblem& p, const DeviceBuffer& dx,
                              const DeviceBuffer& dw, const DeviceBuffer& dy, const DeviceBuffer& doff,
                              int variant = 0) {
  gpu::GroupedGemmArgs a;
  a.x = dx.data();
  a.ldx = p.ldx;
  a.w = dw.data();
  a.ldw = p.ldw;
  a.w_expert_stride = p.wes;
  a.y = dy.data();
  a.ldy = p.ldy;
  a.offsets = doff.as<int32_t>();
  a.experts = p.E;
  a.max_rows = p.max_rows;
  a.n = c.n;
  a.k = c.k;
  a.variant = variant;
  return a;
}

// Every kernel variant (0 default = wgmma 128 x 256 tiles, 1: mma.sync 128 x 128, 2: mma.sync
// 128 x 256, 3: wgmma 128 x 128) on the same inputs.
void run_case(const GroupedCase& c, std::mt19937& rng) {
  const HostProblem p = make_problem(c, rng);
  DeviceBuffer dx = DeviceBuffer::from(p.xbits), dw = DeviceBuffer::from(p.wbits);
  DeviceBuffer doff = DeviceBuffer::from(p.off);
  DeviceBuffer dy(size_t(p.rows_alloc) * p.ldy * 2);
  for (int variant : {0, 1, 2, 3}) {
    dy.fill_bytes(kNanByte);
    gpu::grouped_gemm_bf16(args_for(c, p, dx, dw, dy, doff, variant), nullptr);
    cuda::device_synchronize();
    check_output(c, p, dy.to_vector<uint16_t>(size_t(p.rows_alloc) * p.ldy),
                 "grouped_gemm variant " + std::to_string(variant));
  }
}

TEST(CudaGroupedGemm, CornerCasesAgainstHost) {
  REQUIRE_GPU();
  std::mt19937 rng(31);
  const std::vector<GroupedCase> cases = {
      {"uneven, empty and 1-row experts, padded strides", {0, 1, 130, 257, 0, 64}, 136, 72, 8, 16, 8, 24, 5},
      {"counts around the 128-row tile", {128, 0, 127, 129, 1, 255, 256}, 264, 40},
      {"counts around the 64-row half tile", {64, 65, 63, 192, 193, 191, 320}, 256, 136, 0, 0, 0, 0, 64},
      {"k a multiple of the 64-k stage, 9 stages", {70, 190}, 128, 576},
      {"one expert, one 8 x 8 block", {3}, 8, 8},
      {"every expert empty", {0, 0, 0}, 16, 16, 0, 0, 0, 0, 300},
      {"deep k (32 k tiles, partial last)", {200, 50, 300}, 256, 1000, 0, 8, 0, 0, 17},
      {"n below one tile, wide ldy", {40, 0, 0, 300, 0, 7}, 24, 160, 0, 0, 104, 0, 128},
      {"n past two 256-column tiles", {5, 140}, 520, 24},
  };
  for (const GroupedCase& c : cases) run_case(c, rng);
  {  // 512 experts, most with 0..3 rows (the scan over the offsets covers two passes of the block)
    GroupedCase c{"512 experts, sparse", {}, 64, 64};
    std::uniform_int_distribution<int> cnt(0, 7);
    for (int e = 0; e < 512; ++e) c.counts.push_back(std::max(0, cnt(rng) - 4));
    c.counts[511] = 131;  // the last expert spans two tiles
    run_case(c, rng);
  }
  {  // a MoE-like random split over 8 experts, 1000 rows
    GroupedCase c{"random split of 1000 rows", std::vector<int>(8, 0), 384, 256};
    std::uniform_int_distribution<int> pick(0, 7);
    for (int i = 0; i < 1000; ++i) ++c.counts[pick(rng) % 3 == 0 ? 2 : pick(rng)];
    run_case(c, rng);
  }
}

TEST(CudaGroupedGemm, GraphReplayReadsOffsetsOnDevice) {
  REQUIRE_GPU();
  std::mt19937 rng(32);
  // Two splits of the same 600 rows; the graph is captured with the first and replayed with the
  // second written into the same offsets buffer.
  GroupedCase a{"split A", {100, 0, 300, 1, 199}, 200, 96};
  GroupedCase b{"split B", {0, 450, 10, 0, 140}, 200, 96};
  HostProblem pa = make_problem(a, rng);
  HostProblem pb = pa;  // same x and W values, other offsets
  pb.off = offsets_of(b.counts);
  DeviceBuffer dx = DeviceBuffer::from(pa.xbits), dw = DeviceBuffer::from(pa.wbits);
  DeviceBuffer doff = DeviceBuffer::from(pa.off);
  DeviceBuffer dy = poisoned(size_t(pa.rows_alloc) * pa.ldy * 2);
  const gpu::GroupedGemmArgs args = args_for(a, pa, dx, dw, dy, doff);
  gpu::grouped_gemm_bf16(args, nullptr);  // first call outside capture (one-time kernel attribute)
  cuda::device_synchronize();
  dy.fill_bytes(0xFF);

  cudaStream_t s = nullptr;
  ASSERT_TRUE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ASSERT_TRUE(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
  gpu::grouped_gemm_bf16(args, s);
  ASSERT_TRUE(cudaStreamEndCapture(s, &graph) == cudaSuccess);
  ASSERT_TRUE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  ASSERT_TRUE(cudaGraphLaunch(exec, s) == cudaSuccess);
  ASSERT_TRUE(cudaStreamSynchronize(s) == cudaSuccess);
  check_output(a, pa, dy.to_vector<uint16_t>(size_t(pa.rows_alloc) * pa.ldy), "graph replay");

  doff.upload(pb.off.data(), pb.off.size() * sizeof(int32_t));
  dy.fill_bytes(0xFF);
  ASSERT_TRUE(cudaGraphLaunch(exec, s) == cudaSuccess);
  ASSERT_TRUE(cudaStreamSynchronize(s) == cudaSuccess);
  check_output(b, pb, dy.to_vector<uint16_t>(size_t(pb.rows_alloc) * pb.ldy), "graph replay, new offsets");
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
}

TEST(CudaGroupedGemm, RejectsBadArguments) {
  // Validation happens before any CUDA call, so this runs without a GPU too.
  gpu::GroupedGemmArgs ok;
  ok.x = ok.w = reinterpret_cast<const void*>(uintptr_t{256});
  ok.y = reinterpret_cast<void*>(uintptr_t{256});
  ok.offsets = reinterpret_cast<const int32_t*>(uintptr_t{256});
  ok.experts = 4;
  ok.max_rows = 0;  // nothing to do: returns before any launch
  ok.n = 64;
  ok.k = 32;
  ok.ldx = 32;
  ok.ldw = 32;
  ok.ldy = 64;
  ok.w_expert_stride = 64 * 32;
  auto throws = [](const gpu::GroupedGemmArgs& p) {
    try {
      gpu::grouped_gemm_bf16(p, nullptr);
    } catch (const Error& e) {
      const std::string m = e.what();
      return m.rfind("grouped_gemm_bf16: ", 0) == 0 && m.find('\n') == std::string::npos;
    }
    return false;
  };
  EXPECT_TRUE(gpu::grouped_gemm_supported(ok)) << gpu::grouped_gemm_unsupported(ok);
  EXPECT_TRUE(!throws(ok)) << "valid arguments with max_rows 0 rejected";
  struct Bad {
    const char* what;
    void (*mutate)(gpu::GroupedGemmArgs&);
  };
  const Bad bad[] = {
      {"null x", [](gpu::GroupedGemmArgs& p) { p.x = nullptr; }},
      {"null w", [](gpu::GroupedGemmArgs& p) { p.w = nullptr; }},
      {"null y", [](gpu::GroupedGemmArgs& p) { p.y = nullptr; }},
      {"null offsets", [](gpu::GroupedGemmArgs& p) { p.offsets = nullptr; }},
      {"experts 0", [](gpu::GroupedGemmArgs& p) { p.experts = 0; }},
      {"max_rows -1", [](gpu::GroupedGemmArgs& p) { p.max_rows = -1; }},
      {"n 0", [](gpu::GroupedGemmArgs& p) { p.n = 0; }},
      {"k 0", [](gpu::GroupedGemmArgs& p) { p.k = 0; }},
      {"n 60 (not a multiple of 8)", [](gpu::GroupedGemmArgs& p) { p.n = 60; }},
      {"k 36 (not a multiple of 8)", [](gpu::GroupedGemmArgs& p) { p.k = 36; p.ldx = p.ldw = 40; }},
      {"ldx < k", [](gpu::GroupedGemmArgs& p) { p.ldx = 24; }},
      {"ldx not a multiple of 8", [](gpu::GroupedGemmArgs& p) { p.ldx = 36; }},
      {"ldw < k", [](gpu::GroupedGemmArgs& p) { p.ldw = 24; }},
      {"ldw not a multiple of 8", [](gpu::GroupedGemmArgs& p) { p.ldw = 36; }},
      {"ldy < n", [](gpu::GroupedGemmArgs& p) { p.ldy = 56; }},
      {"ldy not a multiple of 8", [](gpu::GroupedGemmArgs& p) { p.ldy = 68; }},
      {"w_expert_stride not a multiple of 8", [](gpu::GroupedGemmArgs& p) { p.w_expert_stride = 2052; }},
      {"w_expert_stride negative", [](gpu::GroupedGemmArgs& p) { p.w_expert_stride = -2048; }},
      {"x misaligned", [](gpu::GroupedGemmArgs& p) { p.x = reinterpret_cast<const void*>(uintptr_t{258}); }},
      {"w misaligned", [](gpu::GroupedGemmArgs& p) { p.w = reinterpret_cast<const void*>(uintptr_t{264}); }},
      {"y misaligned", [](gpu::GroupedGemmArgs& p) { p.y = reinterpret_cast<void*>(uintptr_t{260}); }},
      {"grid too large", [](gpu::GroupedGemmArgs& p) { p.max_rows = 2000000000; p.n = 1 << 20; p.ldy = p.n; }},
      {"variant 4", [](gpu::GroupedGemmArgs& p) { p.variant = 4; }},
      {"variant -1", [](gpu::GroupedGemmArgs& p) { p.variant = -1; }},
  };
  for (const Bad& b : bad) {
    gpu::GroupedGemmArgs p = ok;
    b.mutate(p);
    EXPECT_TRUE(throws(p)) << b.what << " accepted";
    EXPECT_TRUE(!gpu::grouped_gemm_supported(p)) << b.what << " reported supported";
  }
}

// ---------------------------------------------------------------- real shapes

// Random uneven split of `rows` over E experts: weights uniform in [0.2, 1.8), expert 7 gets none
// and expert 9 one row (the rest move to expert 0).
std::vector<int> uneven_split(int rows, int E, std::mt19937& rng) {
  std::uniform_real_distribution<double> wdist(0.2, 1.8);
  std::vector<double> wt(E);
  for (double& v : wt) v = wdist(rng);
  wt[7] = 0;
  wt[9] = 0;
  std::discrete_distribution<int> pick(wt.begin(), wt.end());
  std::vector<int> counts(E, 0);
  for (int i = 0; i < rows - 1; ++i) ++counts[pick(rng)];
  counts[9] = 1;
  return counts;
}

// Host reference of rows `rows` of a grouped product: x (f32 [rows][k]) times the expert weights
// (f32 [E][n][k]), with the largest |value| of each row (the tolerance scale).
struct RowRef {
  std::vector<int> rows;
  std::vector<double> ref;  // [rows.size()][n]
  std::vector<double> mag;
};
RowRef host_rows(const std::vector<float>& x, const std::vector<float>& w, const std::vector<int32_t>& off,
                 const std::vector<int>& rows, int n, int k) {
  RowRef rr;
  rr.rows = rows;
  rr.ref.resize(rows.size() * size_t(n));
  rr.mag.assign(rows.size(), 0.0);
  for (size_t i = 0; i < rows.size(); ++i) {
    const int r = rows[i];
    const int e = static_cast<int>(std::upper_bound(off.begin(), off.end(), r) - off.begin()) - 1;
    for (int j = 0; j < n; ++j) {
      double s = 0;
      for (int q = 0; q < k; ++q) s += double(x[size_t(r) * k + q]) * w[(size_t(e) * n + j) * k + q];
      rr.ref[i * n + j] = s;
      rr.mag[i] = std::max(rr.mag[i], std::fabs(s));
    }
  }
  return rr;
}

void check_ref_rows(const std::string& label, const RowRef& rr, const std::vector<uint16_t>& y, int n) {
  FloatCheck fc("row", "col");
  for (size_t i = 0; i < rr.rows.size(); ++i)
    for (int j = 0; j < n; ++j)
      fc.check(from_bf16(y[size_t(rr.rows[i]) * n + j]), float(rr.ref[i * n + j]), 1e-2 * rr.mag[i] + 1e-6,
               rr.rows[i], j);
  EXPECT_TRUE(fc.bad == 0) << label << ": " << fc.summary();
}

TEST(CudaGroupedGemm, RealShapeTimings) {
  REQUIRE_GPU();
  std::mt19937 rng(33);
  const int rows = 16384, E = 64, H = 2048, I = 1536;
  const std::vector<int> counts = uneven_split(rows, E, rng);
  const std::vector<int32_t> off = offsets_of(counts);
  const int most = *std::max_element(counts.begin(), counts.end());
  const int least = *std::min_element(counts.begin(), counts.end());
  int tiles = 0;  // 128-row tiles the kernel computes (the rest of each expert's last tile is padding)
  for (int c : counts) tiles += (c + 127) / 128;
  DeviceBuffer doff = DeviceBuffer::from(off);
  // First and last row of every non-empty expert are checked against the host.
  std::vector<int> check_rows;
  for (int e = 0; e < E; ++e)
    if (counts[e] > 0) {
      check_rows.push_back(off[e]);
      if (counts[e] > 1) check_rows.push_back(off[e + 1] - 1);
    }

  struct Shape {
    const char* name;
    int n, k;
  };
  for (const Shape& sh : {Shape{"gate_up", 2 * I, H}, Shape{"down", H, I}}) {
    DeviceBuffer dx(size_t(rows) * sh.k * 2), dw(size_t(E) * sh.n * sh.k * 2), dy(size_t(rows) * sh.n * 2);
    gpu::fill_uniform_bf16(dx.data(), size_t(rows) * sh.k, 1, 41, 1.0f, nullptr);
    gpu::fill_uniform_bf16(dw.data(), size_t(E) * sh.n * sh.k, 1, 42, 0.03f, nullptr);
    cuda::device_synchronize();
    const RowRef ref = host_rows(from_bf16(dx.to_vector<uint16_t>(size_t(rows) * sh.k)),
                                 from_bf16(dw.to_vector<uint16_t>(size_t(E) * sh.n * sh.k)), off, check_rows, sh.n,
                                 sh.k);
    const double flop = 2.0 * rows * sh.n * double(sh.k);

    // The same work as one cuBLASLt call per expert: cold (a fresh Gemm builds a plan per new row
    // count; host wall time of the first pass) and warm (plans cached, CUDA-event median).
    auto per_expert = [&](gpu::Gemm& gemm) {
      for (int e = 0; e < E; ++e) {
        if (counts[e] == 0) continue;
        gpu::GemmArgs g;
        g.x = static_cast<const uint16_t*>(dx.data()) + size_t(off[e]) * sh.k;
        g.ldx = sh.k;
        g.w = static_cast<const uint16_t*>(dw.data()) + size_t(e) * sh.n * sh.k;
        g.ldw = sh.k;
        g.y = static_cast<uint16_t*>(dy.data()) + size_t(off[e]) * sh.n;
        g.ldy = sh.n;
        g.m = counts[e];
        g.n = sh.n;
        g.k = sh.k;
        gemm.run(g, nullptr);
      }
    };
    gpu::Gemm gemm;
    const auto t0 = std::chrono::steady_clock::now();
    per_expert(gemm);
    cuda::device_synchronize();
    const double cold_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    const double lt_ms = cuda::median_ms([&] { per_expert(gemm); });
    const double lt_tf = flop / (lt_ms * 1e-3) * 1e-12;

    for (int variant : {0, 3, 1, 2}) {
      gpu::GroupedGemmArgs a;
      a.x = dx.data();
      a.ldx = sh.k;
      a.w = dw.data();
      a.ldw = sh.k;
      a.w_expert_stride = int64_t(sh.n) * sh.k;
      a.y = dy.data();
      a.ldy = sh.n;
      a.offsets = doff.as<int32_t>();
      a.experts = E;
      a.max_rows = rows;
      a.n = sh.n;
      a.k = sh.k;
      a.variant = variant;
      dy.fill_bytes(kNanByte);
      gpu::grouped_gemm_bf16(a, nullptr);
      cuda::device_synchronize();
      check_ref_rows(std::string(sh.name) + " variant " + std::to_string(variant), ref,
                     dy.to_vector<uint16_t>(size_t(rows) * sh.n), sh.n);
      const double ms = cuda::median_ms([&] { gpu::grouped_gemm_bf16(a, nullptr); });
      const double tf = flop / (ms * 1e-3) * 1e-12;
      static const char* const kKernel[] = {"wgmma 128x128", "mma.sync 128x128", "mma.sync 128x256", "wgmma 128x256"};
      const double peak = bf16_peak_tflops();
      std::printf("[cuda-ops] grouped_gemm %s variant %d (%s tiles) rows=%d E=%d (per expert %d..%d, %d row tiles, "
                  "%.0f %% useful) N=%d K=%d: %.3f ms, %.1f TFLOP/s (%.0f %% of %.0f); per-expert cuBLASLt %.3f ms, "
                  "%.1f TFLOP/s (cold, new plans: %.1f ms); speedup %.2fx\n",
                  sh.name, variant, kKernel[variant], rows, E, least, most, tiles,
                  100.0 * rows / (128.0 * tiles), sh.n, sh.k, ms, tf, 100.0 * tf / peak, peak,
                  lt_ms, lt_tf, cold_ms, lt_ms / ms);
      EXPECT_TRUE(ms > 0 && lt_ms > 0);
    }
  }
}

}  // namespace
}  // namespace indexcache
