// The GPU model runner (src/gpu): each layer kernel and the cuBLASLt wrapper against a host reference
// (the CPU backend's norm / rope where they exist, plain loops otherwise) on fresh random inputs with
// outputs poisoned first (NaN floats, 0x7F7F7F7F ints); then model-level consistency of the synthetic
// model on a small spec with the real 576/512 latent: chunked vs one-chunk prefill, prefill + one
// decode step (graph and eager) vs a longer prefill, all-F vs a plan with S layers, no NaN anywhere.
// Without a CUDA device every test is skipped.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/device_buffer.h"
#include "gpu/gemm.h"
#include "gpu/layer_kernels.h"
#include "gpu/synthetic_gpu_model.h"
#include "indexcache/error.h"
#include "indexcache/index_plan.h"
#include "cuda_test_util.h"

namespace indexcache {
namespace {

using cuda::DeviceBuffer;
using namespace cuda_test;

// ---------------------------------------------------------------- host helpers

DeviceBuffer upload_bf16(const std::vector<float>& v) { return DeviceBuffer::from(to_bf16(v)); }

// Checks got vs ref with |err| <= abs_tol + rel_tol * |ref|; NaN never passes.
struct Check {
  int64_t n = 0, bad = 0;
  double max_err = 0;
  std::string first;
  void operator()(float got, double ref, double abs_tol, double rel_tol, int64_t where) {
    ++n;
    const double err = std::fabs(got - ref);
    const bool ok = std::isfinite(got) && err <= abs_tol + rel_tol * std::fabs(ref);
    if (std::isfinite(got)) max_err = std::max(max_err, err);
    if (!ok && bad++ < 5)
      first += "  at " + std::to_string(where) + ": got " + std::to_string(got) + " want " + std::to_string(ref) + "\n";
  }
  std::string summary() const {
    return std::to_string(bad) + " of " + std::to_string(n) + " bad, max|err| " + std::to_string(max_err) + "\n" + first;
  }
};

void rope_tables(int positions, int rd, std::vector<float>* cos, std::vector<float>* sin) {
  const int half = rd / 2;
  cos->resize(size_t(positions) * half);
  sin->resize(cos->size());
  for (int p = 0; p < positions; ++p)
    for (int i = 0; i < half; ++i) {
      const double a = p * std::pow(10000.0, -2.0 * i / rd);
      (*cos)[size_t(p) * half + i] = static_cast<float>(std::cos(a));
      (*sin)[size_t(p) * half + i] = static_cast<float>(std::sin(a));
    }
}

// ---------------------------------------------------------------- GEMM

void check_gemm(int m, int n, int k, bool f32, float beta, int batch, std::mt19937& rng) {
  // Batched layout as the head GEMMs use it: x rows hold `batch` blocks of k, y rows `batch` blocks of n.
  const int64_t ldx = int64_t(k) * batch + 8, ldy = int64_t(n) * batch + 8;
  const std::vector<float> x = uniform_bf16(size_t(m) * ldx, rng);
  const std::vector<float> w = uniform_bf16(size_t(batch) * n * k, rng);
  const std::vector<float> y0 = uniform_bf16(size_t(m) * ldy, rng);
  DeviceBuffer dx = upload_bf16(x), dw = upload_bf16(w);
  DeviceBuffer dy = f32 ? DeviceBuffer::from(y0) : upload_bf16(y0);
  if (beta == 0) dy.fill_bytes(0xFF);  // NaN poison: with beta 0 the output must not depend on y
  gpu::GemmArgs a;
  a.x = dx.data();
  a.ldx = ldx;
  a.w = dw.data();
  a.ldw = k;
  a.y = dy.data();
  a.ldy = ldy;
  a.y_f32 = f32;
  a.m = m;
  a.n = n;
  a.k = k;
  a.alpha = 0.5f;
  a.beta = beta;
  a.batch = batch;
  a.x_batch_stride = k;
  a.w_batch_stride = int64_t(n) * k;
  a.y_batch_stride = n;
  gpu::Gemm gemm;
  gemm.run(a, nullptr);
  cuda::device_synchronize();
  std::vector<float> got;
  if (f32)
    got = dy.to_vector<float>(y0.size());
  else
    got = from_bf16(dy.to_vector<uint16_t>(y0.size()));
  Check c;
  for (int b = 0; b < batch; ++b)
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        double acc = 0, mag = 0;
        for (int q = 0; q < k; ++q) {
          const double t = double(x[i * ldx + b * k + q]) * w[(size_t(b) * n + j) * k + q];
          acc += t;
          mag += std::fabs(t);
        }
        const size_t yi = i * ldy + b * n + j;
        const double ref = 0.5 * acc + beta * y0[yi];
        c(got[yi], ref, 1e-5 * mag + 1e-6, f32 ? 1e-5 : 1.0 / 128, int64_t(yi));
      }
  EXPECT_TRUE(c.bad == 0) << "gemm m=" << m << " n=" << n << " k=" << k << " f32=" << f32 << " batch=" << batch
                          << ": " << c.summary();
}

TEST(CudaRunner, GemmAgainstHost) {
  REQUIRE_GPU();
  std::mt19937 rng(11);
  check_gemm(37, 72, 128, true, 0.0f, 1, rng);
  check_gemm(37, 72, 128, false, 0.0f, 1, rng);
  check_gemm(1, 200, 256, true, 1.0f, 1, rng);  // decode row, residual accumulate
  check_gemm(19, 64, 32, false, 0.0f, 4, rng);  // strided batch over heads
  check_gemm(5, 40, 64, true, 1.0f, 3, rng);
}

// ---------------------------------------------------------------- norms and RoPE

TEST(CudaRunner, RmsNormAgainstCpu) {
  REQUIRE_GPU();
  std::mt19937 rng(12);
  for (int dim : {64, 300, 2048, 7168}) {
    const int n = 7, ldx = dim + 4, ldy = dim + 8;
    const std::vector<float> x = uniform_bf16(size_t(n) * ldx, rng, -3, 3);
    const std::vector<float> w = uniform_bf16(dim, rng, 0.5f, 1.5f);
    std::vector<float> ref(size_t(n) * ldy, 0.0f);
    cpu::norm({.x = x.data(), .x_stride = ldx, .w = w.data(), .y = ref.data(), .y_stride = ldy, .tokens = n,
               .dim = dim, .eps = 1e-6f});
    DeviceBuffer dx = DeviceBuffer::from(x), dw = upload_bf16(w), dy = poisoned(ref.size() * 2);
    gpu::rms_norm(dx.as<float>(), ldx, dw.data(), dy.data(), ldy, n, dim, 1e-6f, nullptr);
    cuda::device_synchronize();
    const std::vector<float> got = from_bf16(dy.to_vector<uint16_t>(ref.size()));
    Check c;
    for (int t = 0; t < n; ++t)
      for (int i = 0; i < dim; ++i) c(got[size_t(t) * ldy + i], ref[size_t(t) * ldy + i], 1e-4, 1.0 / 128, t * ldy + i);
    EXPECT_TRUE(c.bad == 0) << "rms_norm dim " << dim << ": " << c.summary();
  }
}

TEST(CudaRunner, FinalizeLatentAgainstCpu) {
  REQUIRE_GPU();
  std::mt19937 rng(13);
  const int n = 9, kvlr = 512, rd = 64, lat = kvlr + rd, slots = 40;
  std::vector<float> cs, sn;
  rope_tables(slots, rd, &cs, &sn);
  const std::vector<float> tmp = uniform_bf16(size_t(n) * lat, rng, -2, 2);
  const std::vector<float> w = uniform_bf16(kvlr, rng, 0.5f, 1.5f);
  std::vector<int32_t> pos(n);
  for (int t = 0; t < n; ++t) pos[t] = 3 + 4 * t;  // scattered cache rows
  std::vector<float> ref = tmp;
  cpu::norm({.x = ref.data(), .x_stride = lat, .w = w.data(), .y = ref.data(), .y_stride = lat, .tokens = n,
             .dim = kvlr, .eps = 1e-6f});
  cpu::rope({.x = ref.data(), .token_stride = lat, .head_stride = 0, .tokens = n, .heads = 1, .offset = kvlr,
             .rope_dim = rd, .cos = cs.data(), .sin = sn.data(), .positions = pos.data(),
             .layout = RopeLayout::kInterleaved});
  DeviceBuffer dt = DeviceBuffer::from(tmp), dw = upload_bf16(w), dc = poisoned(size_t(slots) * lat * 2);
  DeviceBuffer dp = DeviceBuffer::from(pos), dcos = DeviceBuffer::from(cs), dsin = DeviceBuffer::from(sn);
  gpu::finalize_latent(dt.as<float>(), dw.data(), dc.data(), dp.as<int32_t>(), dcos.as<float>(), dsin.as<float>(), n,
                       kvlr, rd, 1e-6f, nullptr);
  cuda::device_synchronize();
  const std::vector<float> got = from_bf16(dc.to_vector<uint16_t>(size_t(slots) * lat));
  Check c;
  for (int t = 0; t < n; ++t)
    for (int i = 0; i < lat; ++i) c(got[size_t(pos[t]) * lat + i], ref[size_t(t) * lat + i], 1e-3, 1.0 / 128, t * lat + i);
  EXPECT_TRUE(c.bad == 0) << c.summary();
}

TEST(CudaRunner, FinalizeIndexKeyAgainstCpuBothLayouts) {
  REQUIRE_GPU();
  std::mt19937 rng(14);
  const int n = 11, dim = 128, rd = 64, slots = 50;
  std::vector<float> cs, sn;
  rope_tables(slots, rd, &cs, &sn);
  for (RopeLayout layout : {RopeLayout::kInterleaved, RopeLayout::kHalfSplit}) {
    const std::vector<float> tmp = uniform_bf16(size_t(n) * dim, rng, -2, 3);
    const std::vector<float> w = uniform_bf16(dim, rng, 0.5f, 1.5f), b = uniform_bf16(dim, rng, -0.5f, 0.5f);
    std::vector<int32_t> pos(n);
    for (int t = 0; t < n; ++t) pos[t] = (7 * t + 5) % slots;
    std::vector<float> ref = tmp;
    cpu::norm({.x = ref.data(), .x_stride = dim, .w = w.data(), .bias = b.data(), .y = ref.data(), .y_stride = dim,
               .tokens = n, .dim = dim, .eps = 1e-6f, .layer_norm = true});
    cpu::rope({.x = ref.data(), .token_stride = dim, .head_stride = 0, .tokens = n, .heads = 1, .offset = 0,
               .rope_dim = rd, .cos = cs.data(), .sin = sn.data(), .positions = pos.data(), .layout = layout});
    DeviceBuffer dt = DeviceBuffer::from(tmp), dw = upload_bf16(w), db = upload_bf16(b);
    DeviceBuffer dc = poisoned(size_t(slots) * dim * 2), dp = DeviceBuffer::from(pos);
    DeviceBuffer dcos = DeviceBuffer::from(cs), dsin = DeviceBuffer::from(sn);
    gpu::finalize_index_key(dt.as<float>(), dw.data(), db.data(), dc.data(), dp.as<int32_t>(), dcos.as<float>(),
                            dsin.as<float>(), n, dim, rd, layout, 1e-6f, nullptr);
    cuda::device_synchronize();
    const std::vector<float> got = from_bf16(dc.to_vector<uint16_t>(size_t(slots) * dim));
    Check c;
    for (int t = 0; t < n; ++t)
      for (int i = 0; i < dim; ++i) c(got[size_t(pos[t]) * dim + i], ref[size_t(t) * dim + i], 1e-3, 1.0 / 128, t * dim + i);
    EXPECT_TRUE(c.bad == 0) << "layout " << int(layout) << ": " << c.summary();
  }
}

TEST(CudaRunner, RopeAgainstCpuBothLayouts) {
  REQUIRE_GPU();
  std::mt19937 rng(15);
  const int n = 6, heads = 5, hd = 192, off = 128, rd = 64, slots = 100;
  std::vector<float> cs, sn;
  rope_tables(slots, rd, &cs, &sn);
  for (RopeLayout layout : {RopeLayout::kInterleaved, RopeLayout::kHalfSplit}) {
    const std::vector<float> x = uniform_bf16(size_t(n) * heads * hd, rng);
    std::vector<int32_t> pos(n);
    for (int t = 0; t < n; ++t) pos[t] = 90 - 13 * t;
    std::vector<float> ref = x;
    cpu::rope({.x = ref.data(), .token_stride = heads * hd, .head_stride = hd, .tokens = n, .heads = heads,
               .offset = off, .rope_dim = rd, .cos = cs.data(), .sin = sn.data(), .positions = pos.data(),
               .layout = layout});
    // Out of place into a [n, heads, 96] buffer (like q_rope -> absorbed query), poisoned.
    const int dhd = 96;
    DeviceBuffer dx = upload_bf16(x), dd = poisoned(size_t(n) * heads * dhd * 2), dp = DeviceBuffer::from(pos);
    DeviceBuffer dcos = DeviceBuffer::from(cs), dsin = DeviceBuffer::from(sn);
    gpu::RopeArgs a;
    a.src = static_cast<const uint16_t*>(dx.data()) + off;
    a.src_token_stride = heads * hd;
    a.src_head_stride = hd;
    a.dst = static_cast<uint16_t*>(dd.data()) + 32;
    a.dst_token_stride = heads * dhd;
    a.dst_head_stride = dhd;
    a.tokens = n;
    a.heads = heads;
    a.rope_dim = rd;
    a.cos = dcos.as<float>();
    a.sin = dsin.as<float>();
    a.positions = dp.as<int32_t>();
    a.layout = layout;
    gpu::rope_bf16(a, nullptr);
    cuda::device_synchronize();
    const std::vector<float> got = from_bf16(dd.to_vector<uint16_t>(size_t(n) * heads * dhd));
    Check c;
    for (int t = 0; t < n; ++t)
      for (int h = 0; h < heads; ++h)
        for (int i = 0; i < rd; ++i)
          c(got[(size_t(t) * heads + h) * dhd + 32 + i], ref[(size_t(t) * heads + h) * hd + off + i], 1e-3, 1.0 / 128,
            (t * heads + h) * rd + i);
    EXPECT_TRUE(c.bad == 0) << "layout " << int(layout) << ": " << c.summary();
  }
}

TEST(CudaRunner, SiluMulAgainstHost) {
  REQUIRE_GPU();
  std::mt19937 rng(16);
  const int n = 13, inter = 200, ld = 2 * inter + 8;
  const std::vector<float> gu = uniform_bf16(size_t(n) * ld, rng, -4, 4);
  for (bool f32 : {false, true}) {
    DeviceBuffer dg = f32 ? DeviceBuffer::from(gu) : upload_bf16(gu), dout = poisoned(size_t(n) * inter * 2);
    if (f32)
      gpu::silu_mul_f32(dg.as<float>(), ld, dout.data(), inter, n, inter, nullptr);
    else
      gpu::silu_mul_bf16(dg.data(), ld, dout.data(), inter, n, inter, nullptr);
    cuda::device_synchronize();
    const std::vector<float> got = from_bf16(dout.to_vector<uint16_t>(size_t(n) * inter));
    Check c;
    for (int t = 0; t < n; ++t)
      for (int i = 0; i < inter; ++i) {
        const double g = gu[size_t(t) * ld + i], u = gu[size_t(t) * ld + inter + i];
        c(got[size_t(t) * inter + i], g / (1 + std::exp(-g)) * u, 1e-4, 1.0 / 128, t * inter + i);
      }
    EXPECT_TRUE(c.bad == 0) << "f32 input " << f32 << ": " << c.summary();
  }
}

// ---------------------------------------------------------------- MoE

// Host routing, written from the model's rule (src/model/moe.cpp route_tokens).
void host_route(const float* lg, const float* bias, int E, int G, int topk_group, int K, bool norm, float scaling,
                std::vector<int>* chosen, std::vector<float>* weights, std::vector<float>* choice_out) {
  const int per = E / G;
  std::vector<float> score(E), choice(E), gs(G);
  for (int e = 0; e < E; ++e) {
    score[e] = 1.0f / (1.0f + std::exp(-lg[e]));
    choice[e] = score[e] + bias[e];
  }
  for (int g = 0; g < G; ++g) {
    std::vector<float> v(choice.begin() + g * per, choice.begin() + (g + 1) * per);
    std::sort(v.rbegin(), v.rend());
    gs[g] = v[0] + v[1];
  }
  std::vector<int> groups(G);
  std::iota(groups.begin(), groups.end(), 0);
  std::stable_sort(groups.begin(), groups.end(), [&](int a, int b) { return gs[a] > gs[b]; });
  std::vector<int> order;
  for (int e = 0; e < E; ++e)
    if (std::find(groups.begin(), groups.begin() + topk_group, e / per) != groups.begin() + topk_group) order.push_back(e);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return choice[a] > choice[b]; });
  chosen->assign(order.begin(), order.begin() + K);
  float sum = 0;
  for (int i = 0; i < K; ++i) sum += score[order[i]];
  weights->clear();
  for (int i = 0; i < K; ++i) weights->push_back((norm ? score[order[i]] / (sum + 1e-20f) : score[order[i]]) * scaling);
  *choice_out = choice;
}

TEST(CudaRunner, RouteExpertsAgainstHost) {
  REQUIRE_GPU();
  std::mt19937 rng(17);
  struct Case { int n, E, G, tg, K; bool norm; float scale; };
  for (const Case& cs : {Case{50, 8, 2, 1, 2, true, 1.0f}, Case{40, 64, 1, 1, 4, true, 1.8f},
                         Case{30, 256, 8, 4, 8, true, 2.5f}, Case{20, 16, 4, 2, 3, false, 1.0f}}) {
    const std::vector<float> lg = uniform_bf16(size_t(cs.n) * cs.E, rng, -3, 3);
    const std::vector<float> bias = uniform_bf16(cs.E, rng, -0.1f, 0.1f);
    DeviceBuffer dl = DeviceBuffer::from(lg), db = DeviceBuffer::from(bias);
    DeviceBuffer dc = poisoned(size_t(cs.n) * cs.K * 4, 0x7F), dw = poisoned(size_t(cs.n) * cs.K * 4);
    gpu::RouteArgs a;
    a.logits = dl.as<float>();
    a.bias = db.as<float>();
    a.n = cs.n;
    a.experts = cs.E;
    a.groups = cs.G;
    a.topk_group = cs.tg;
    a.k = cs.K;
    a.norm_topk_prob = cs.norm;
    a.scaling = cs.scale;
    a.chosen = dc.as<int32_t>();
    a.weights = dw.as<float>();
    gpu::route_experts(a, nullptr);
    cuda::device_synchronize();
    const std::vector<int32_t> gc = dc.to_vector<int32_t>(size_t(cs.n) * cs.K);
    const std::vector<float> gw = dw.to_vector<float>(size_t(cs.n) * cs.K);
    int bad = 0;
    std::string first;
    for (int t = 0; t < cs.n; ++t) {
      std::vector<int> hc;
      std::vector<float> hw, choice;
      host_route(lg.data() + size_t(t) * cs.E, bias.data(), cs.E, cs.G, cs.tg, cs.K, cs.norm, cs.scale, &hc, &hw, &choice);
      // Same experts in the same (best-first) order, same weights; exp() rounding may only swap near ties.
      for (int i = 0; i < cs.K; ++i) {
        const int g = gc[size_t(t) * cs.K + i];
        const bool same = g == hc[i];
        const bool near_tie = g >= 0 && g < cs.E && std::fabs(choice[g] - choice[hc[i]]) < 1e-5f;
        const bool w_ok = std::isfinite(gw[size_t(t) * cs.K + i]) &&
                          std::fabs(gw[size_t(t) * cs.K + i] - hw[i]) <= 1e-5 * (1 + std::fabs(hw[i]));
        if (!((same && w_ok) || near_tie)) {
          if (bad++ < 5)
            first += " t" + std::to_string(t) + " i" + std::to_string(i) + ": got " + std::to_string(g) + "/" +
                     std::to_string(gw[size_t(t) * cs.K + i]) + " want " + std::to_string(hc[i]) + "/" +
                     std::to_string(hw[i]);
        }
      }
    }
    EXPECT_EQ(bad, 0) << "E=" << cs.E << " G=" << cs.G << " K=" << cs.K << ":" << first;
  }
}

TEST(CudaRunner, MoeDispatchGatherCombine) {
  REQUIRE_GPU();
  std::mt19937 rng(18);
  const int n = 97, K = 4, E = 16, H = 64, pairs = n * K;
  std::vector<int32_t> chosen(pairs);
  std::uniform_int_distribution<int> pick(0, E - 1);
  for (int t = 0; t < n; ++t) {  // distinct experts per token; expert 5 never chosen (empty expert)
    std::set<int> used;
    for (int i = 0; i < K; ++i) {
      int e;
      do e = pick(rng);
      while (used.count(e) || e == 5);
      used.insert(e);
      chosen[size_t(t) * K + i] = e;
    }
  }
  const std::vector<float> x = uniform_bf16(size_t(n) * H, rng);
  const std::vector<float> wts = uniform_bf16(pairs, rng, 0, 1);
  DeviceBuffer dch = DeviceBuffer::from(chosen), dx = upload_bf16(x), dwt = DeviceBuffer::from(wts);
  DeviceBuffer counts = poisoned(E * 4, 0x7F), offsets = poisoned((E + 1) * 4, 0x7F), scratch = poisoned(E * 4, 0x7F);
  DeviceBuffer slot = poisoned(pairs * 4, 0x7F), slot_token = poisoned(pairs * 4, 0x7F);
  DeviceBuffer xe = poisoned(size_t(pairs) * H * 2);
  gpu::moe_dispatch(dch.as<int32_t>(), pairs, K, E, counts.as<int32_t>(), offsets.as<int32_t>(), scratch.as<int32_t>(),
                    slot.as<int32_t>(), slot_token.as<int32_t>(), nullptr);
  gpu::moe_gather(dx.data(), slot_token.as<int32_t>(), pairs, H, xe.data(), nullptr);
  cuda::device_synchronize();
  const auto off = offsets.to_vector<int32_t>(E + 1);
  const auto cnt = counts.to_vector<int32_t>(E);
  const auto sl = slot.to_vector<int32_t>(pairs);
  const auto st = slot_token.to_vector<int32_t>(pairs);
  const auto gx = from_bf16(xe.to_vector<uint16_t>(size_t(pairs) * H));
  ASSERT_TRUE(off[0] == 0 && off[E] == pairs) << "offsets " << off[0] << " .. " << off[E];
  EXPECT_EQ(cnt[5], 0);
  std::vector<int> seen(pairs, 0);
  int bad = 0;
  for (int p = 0; p < pairs; ++p) {
    const int e = chosen[p], r = sl[p];
    if (r < 0 || r >= pairs) {
      ++bad;
      continue;
    }
    ++seen[r];
    if (r < off[e] || r >= off[e + 1] || st[r] != p / K) ++bad;  // row inside its expert's range, right token
  }
  for (int e = 0; e < E; ++e) bad += (off[e + 1] - off[e] != cnt[e]);
  for (int r = 0; r < pairs; ++r) bad += seen[r] != 1;  // a permutation
  for (int r = 0; r < pairs && bad == 0; ++r)
    for (int d = 0; d < H; ++d) bad += gx[size_t(r) * H + d] != x[size_t(st[r]) * H + d];
  EXPECT_EQ(bad, 0) << "dispatch/gather mismatches";

  // Combine: x_res[t] += sum_i w[t,i] * ye[slot[t,i]], bf16 rows (prefill) and f32 identity rows (decode).
  const std::vector<float> ye = uniform_bf16(size_t(pairs) * H, rng);
  const std::vector<float> res = uniform_bf16(size_t(n) * H, rng);
  for (bool f32 : {false, true}) {
    DeviceBuffer dye = f32 ? DeviceBuffer::from(ye) : upload_bf16(ye), dres = DeviceBuffer::from(res);
    gpu::moe_combine(dye.data(), f32, f32 ? nullptr : slot.as<int32_t>(), dwt.as<float>(), n, K, H, dres.as<float>(),
                     nullptr);
    cuda::device_synchronize();
    const auto got = dres.to_vector<float>(size_t(n) * H);
    Check c;
    for (int t = 0; t < n; ++t)
      for (int d = 0; d < H; ++d) {
        double ref = res[size_t(t) * H + d];
        for (int i = 0; i < K; ++i) {
          const int p = t * K + i, row = f32 ? p : sl[p];
          ref += double(wts[p]) * ye[size_t(row) * H + d];
        }
        c(got[size_t(t) * H + d], ref, 1e-5, 1e-5, t * H + d);
      }
    EXPECT_TRUE(c.bad == 0) << "combine f32=" << f32 << ": " << c.summary();
  }
}

TEST(CudaRunner, ExpertGemvAgainstHost) {
  REQUIRE_GPU();
  std::mt19937 rng(19);
  const int E = 6, rows = 77, cols = 264, batch = 3;
  const std::vector<float> w = uniform_bf16(size_t(E) * rows * cols, rng);
  const std::vector<float> x = uniform_bf16(size_t(batch) * cols, rng);
  const std::vector<int32_t> ids = {4, 0, 5};
  DeviceBuffer dw = upload_bf16(w), dx = upload_bf16(x), di = DeviceBuffer::from(ids);
  for (bool shared_x : {false, true}) {
    DeviceBuffer dy = poisoned(size_t(batch) * rows * 4);
    gpu::gemv_bf16(dw.data(), int64_t(rows) * cols, di.as<int32_t>(), dx.data(), shared_x ? 0 : cols, dy.as<float>(),
                   rows, batch, rows, cols, nullptr);
    cuda::device_synchronize();
    const auto got = dy.to_vector<float>(size_t(batch) * rows);
    Check c;
    for (int b = 0; b < batch; ++b)
      for (int r = 0; r < rows; ++r) {
        double acc = 0, mag = 0;
        for (int j = 0; j < cols; ++j) {
          const double t = double(w[(size_t(ids[b]) * rows + r) * cols + j]) * x[size_t(shared_x ? 0 : b) * cols + j];
          acc += t;
          mag += std::fabs(t);
        }
        c(got[size_t(b) * rows + r], acc, 1e-5 * mag + 1e-6, 0, b * rows + r);
      }
    EXPECT_TRUE(c.bad == 0) << "shared_x " << shared_x << ": " << c.summary();
  }
}

// ---------------------------------------------------------------- the model

ModelSpec small_spec(Family family) {
  ModelSpec s;
  s.family = family;
  s.model_type = family_name(family);
  s.vocab_size = 512;
  s.hidden_size = 256;
  s.num_layers = 4;
  s.num_heads = 4;
  s.q_lora_rank = 128;
  s.kv_lora_rank = 512;
  s.qk_nope_head_dim = 64;
  s.qk_rope_head_dim = 64;
  s.v_head_dim = 64;
  s.intermediate_size = 512;
  s.moe_intermediate_size = 128;
  s.n_routed_experts = 8;
  s.n_shared_experts = 1;
  s.num_experts_per_tok = 2;
  s.n_group = 2;
  s.topk_group = 1;
  s.norm_topk_prob = true;
  s.routed_scaling_factor = 1.5;
  s.layer_is_moe = {false, true, true, true};
  s.rms_norm_eps = 1e-6;
  s.max_position_embeddings = 4096;
  s.index_n_heads = 8;
  s.index_head_dim = 128;
  s.index_topk = 64;
  s.rope.theta = 10000.0;
  return s;
}

constexpr double kModelTol = 2e-2;  // bf16 activations through 4 layers, different GEMM algorithms per M

TEST(CudaRunner, ModelChunkedPrefillMatchesOneChunk) {
  REQUIRE_GPU();
  for (Family fam : {Family::kGlmMoeDsa, Family::kDeepseekV32}) {
    const ModelSpec s = small_spec(fam);
    gpu::SyntheticGpuModel model(s, 1024, 3);
    const IndexPlan plan = IndexPlan::full(s.num_layers);
    gpu::RunOptions one;
    one.chunk = 300;
    const gpu::PhaseResult r1 = model.prefill(300, plan, one);
    const std::vector<float> a = model.last_logits();
    gpu::RunOptions chunked = one;
    chunked.chunk = 64;
    const gpu::PhaseResult r2 = model.prefill(300, plan, chunked);
    const std::vector<float> b = model.last_logits();
    ASSERT_TRUE(all_finite(a) && all_finite(b)) << "NaN/inf in logits";
    const double e = rel_l2(b, a);
    std::printf("[cuda-ops] model %s prefill 300: one chunk vs 64-token chunks rel L2 %.3g; %.3f ms / %.3f ms\n",
                family_name(fam).c_str(), e, r1.seconds * 1e3, r2.seconds * 1e3);
    EXPECT_TRUE(e < kModelTol) << "chunked prefill differs: rel L2 " << e;
    EXPECT_TRUE(r1.seconds > 0 && r1.tokens == 300 && r1.kernels.attention > 0 && r1.kernels.indexer > 0 &&
                r1.kernels.gemm > 0 && r1.kernels.moe > 0 && r1.flops.indexer > 0 && r1.flops.attention > 0)
        << "phase result not filled";
    EXPECT_TRUE(std::fabs(r1.flops.indexer - r2.flops.indexer) <= 1e-9 * r1.flops.indexer &&
                std::fabs(r1.flops.attention - r2.flops.attention) <= 1e-9 * r1.flops.attention)
        << "flop counts depend on the chunking";
  }
}

TEST(CudaRunner, ModelDecodeStepMatchesLongerPrefill) {
  REQUIRE_GPU();
  const ModelSpec s = small_spec(Family::kGlmMoeDsa);
  gpu::SyntheticGpuModel model(s, 1024, 5);
  for (const char* pattern : {"FFFF", "FSFS"}) {
    const IndexPlan plan = IndexPlan::from_pattern(pattern, s.num_layers);
    gpu::RunOptions o;
    o.chunk = 128;
    model.prefill(201, plan, o);
    const std::vector<float> ref = model.last_logits();
    std::vector<float> graph_logits;
    for (bool graphs : {true, false}) {
      gpu::RunOptions d = o;
      d.decode_steps = 1;
      d.cuda_graphs = graphs;
      const gpu::PhaseResult r = model.decode(200, plan, d);
      const std::vector<float> got = model.last_logits();
      ASSERT_TRUE(all_finite(got) && all_finite(ref)) << "NaN/inf in logits";
      const double e = rel_l2(got, ref);
      std::printf("[cuda-ops] model %s decode@200 (graphs %d) vs prefill 201: rel L2 %.3g\n", pattern, int(graphs), e);
      EXPECT_TRUE(e < kModelTol) << pattern << " graphs " << graphs << ": rel L2 " << e;
      EXPECT_TRUE(r.seconds > 0 && r.tokens == 1) << "decode result not filled";
      if (graphs) {
        graph_logits = got;
      } else {
        // The graph replays the same kernels on the same data as the eager step, and every kernel on
        // the decode path is deterministic: the logits must agree to rounding noise at most.
        const double ge = rel_l2(graph_logits, got);
        std::printf("[cuda-ops] model %s decode@200 graph vs eager: rel L2 %.3g\n", pattern, ge);
        EXPECT_TRUE(ge < 1e-6) << pattern << ": graph replay differs from the eager step: rel L2 " << ge;
      }
    }
    // Several steps (the graph replayed) stay finite and land on the longer prefill too.
    gpu::RunOptions d = o;
    d.decode_steps = 5;
    model.decode(196, plan, d);
    const std::vector<float> got = model.last_logits();
    const double e = rel_l2(got, ref);
    std::printf("[cuda-ops] model %s 5 decode steps from 196 vs prefill 201: rel L2 %.3g\n", pattern, e);
    EXPECT_TRUE(all_finite(got) && e < kModelTol) << pattern << " 5 steps: rel L2 " << e;
  }
}

TEST(CudaRunner, ModelSharedPlanDiffersButStaysFinite) {
  REQUIRE_GPU();
  const ModelSpec s = small_spec(Family::kGlmMoeDsa);
  gpu::SyntheticGpuModel model(s, 1024, 9);
  gpu::RunOptions o;
  o.chunk = 256;
  model.prefill(400, IndexPlan::full(s.num_layers), o);
  const std::vector<float> full = model.last_logits();
  model.prefill(400, IndexPlan::from_pattern("FSSS", s.num_layers), o);
  const std::vector<float> shared = model.last_logits();
  ASSERT_TRUE(all_finite(full) && all_finite(shared)) << "NaN/inf in logits";
  const double e = rel_l2(shared, full);
  std::printf("[cuda-ops] model FSSS vs FFFF at 400 tokens (k 64): rel L2 %.3g\n", e);
  EXPECT_TRUE(e > 1e-4) << "an S plan gave the same logits as all-F: selections not used?";
  EXPECT_EQ(model.cache_bytes_per_token(IndexPlan::from_pattern("FSSS", s.num_layers)),
            size_t(4 * 576 * 2 + 1 * 128 * 2));
}

// RunOptions::indexer_fp8: the e4m3 indexer (keys quantized into their own cache as they are
// written, queries per (token, head) row). Layer 0 sees identical inputs either way, so its index
// scores differ only by the e4m3 rounding of q and k: a few percent of the row's magnitude. (Later
// layers and the logits are not compared: on a random model a single flipped near-tie selection
// changes everything downstream, fp8 or not.) The decode step, which finds the new key's cache row
// from the device position, must give the same logits replayed as a graph as eagerly.
TEST(CudaRunner, ModelFp8IndexerTracksBf16) {
  REQUIRE_GPU();
  const ModelSpec s = small_spec(Family::kGlmMoeDsa);
  gpu::SyntheticGpuModel model(s, 1024, 11);
  const IndexPlan plan = IndexPlan::from_pattern("FSFS", s.num_layers);
  std::mt19937 rng(77);
  std::uniform_int_distribution<int32_t> tok(0, s.vocab_size - 1);
  std::vector<int32_t> ids(401);
  for (auto& id : ids) id = tok(rng);
  const std::vector<int32_t> rows = {0, 63, 200, 400};
  gpu::RunOptions o;
  o.chunk = 128;
  gpu::PrefillDebug dbf;
  dbf.rows = rows;
  model.prefill_ids(ids, plan, o, &dbf);
  gpu::RunOptions f = o;
  f.indexer_fp8 = true;
  for (bool hadamard : {true, false}) {  // plain e4m3 last: the decode checks below use it
    f.indexer_hadamard = hadamard;
    gpu::PrefillDebug d8;
    d8.rows = rows;
    model.prefill_ids(ids, plan, f, &d8);
    const std::vector<float> fp8_logits = model.last_logits();
    ASSERT_TRUE(all_finite(fp8_logits)) << "NaN/inf in fp8-indexer logits";
    ASSERT_TRUE(dbf.index_scores.size() == d8.index_scores.size());
    ASSERT_TRUE(!d8.index_scores.empty() && !d8.index_scores[0].empty()) << "layer 0 scores not captured";
    double worst = 0, mean_rel = 0;
    size_t n = 0;
    bool any_diff = false;
    for (size_t i = 0; i < rows.size(); ++i) {
      const int r = rows[i];
      const float* a = dbf.index_scores[0].data() + i * ids.size();
      const float* b = d8.index_scores[0].data() + i * ids.size();
      double amax = 0;
      for (int k = 0; k <= r; ++k) amax = std::max(amax, double(std::fabs(a[k])));
      for (int k = 0; k <= r; ++k) {
        ASSERT_TRUE(std::isfinite(b[k])) << "row " << r << " key " << k << ": " << b[k];
        const double e = std::fabs(double(b[k]) - a[k]) / std::max(amax, 1e-30);
        worst = std::max(worst, e);
        mean_rel += e;
        ++n;
        any_diff = any_diff || b[k] != a[k];
      }
      for (size_t k = r + 1; k < ids.size(); ++k) EXPECT_TRUE(std::isinf(b[k]) && b[k] < 0) << "future key not -inf";
    }
    mean_rel /= double(n);
    std::printf("[cuda-ops] model FSFS layer-0 index scores, fp8%s vs bf16 indexer: worst %.3g, mean %.3g of the row "
                "max\n", hadamard ? " (Hadamard)" : "", worst, mean_rel);
    EXPECT_TRUE(any_diff) << "fp8 scores equal the bf16 ones bit for bit: the option was ignored";
    EXPECT_TRUE(worst < 0.1 && mean_rel < 0.02) << "fp8 scores too far from bf16: worst " << worst << ", mean " << mean_rel
                                                 << " (Hadamard " << hadamard << ")";
  }

  std::vector<float> graph_logits;
  for (bool graphs : {true, false}) {
    gpu::RunOptions d = f;
    d.decode_steps = 3;
    d.cuda_graphs = graphs;
    model.decode(397, plan, d);
    const std::vector<float> got = model.last_logits();
    EXPECT_TRUE(all_finite(got)) << "fp8 decode, graphs " << graphs;
    if (graphs) {
      graph_logits = got;
    } else {
      const double ge = rel_l2(graph_logits, got);
      std::printf("[cuda-ops] model FSFS fp8 indexer 3 decode steps: graph vs eager rel L2 %.3g\n", ge);
      EXPECT_TRUE(ge < 1e-6) << "fp8 decode: graph replay differs from the eager steps: rel L2 " << ge;
    }
  }
}

TEST(CudaRunner, ModelFp8IndexerNeedsTensorCoreShapes) {
  REQUIRE_GPU();
  ModelSpec s = small_spec(Family::kGlmMoeDsa);
  s.index_head_dim = 64;  // the generic (CUDA-core) indexer: no e4m3 kernel for it
  gpu::SyntheticGpuModel model(s, 256, 1);
  gpu::RunOptions o;
  o.indexer_fp8 = true;
  std::string msg;
  try {
    model.prefill(100, IndexPlan::full(s.num_layers), o);
  } catch (const Error& e) {
    msg = e.what();
  }
  EXPECT_TRUE(msg.find("indexer_fp8") != std::string::npos) << "fp8 indexer on a 64-dim indexer: '" << msg << "'";
  gpu::RunOptions h;
  h.indexer_hadamard = true;  // without indexer_fp8
  msg.clear();
  try {
    model.prefill(100, IndexPlan::full(s.num_layers), h);
  } catch (const Error& e) {
    msg = e.what();
  }
  EXPECT_TRUE(msg.find("indexer_hadamard") != std::string::npos) << "Hadamard without fp8 accepted: '" << msg << "'";
}

TEST(CudaRunner, ModelRejectsBadRequests) {
  REQUIRE_GPU();
  const ModelSpec s = small_spec(Family::kGlmMoeDsa);
  gpu::SyntheticGpuModel model(s, 256, 1);
  bool threw = false;
  try {
    model.prefill(300, IndexPlan::full(s.num_layers), gpu::RunOptions{});
  } catch (const Error&) {
    threw = true;
  }
  EXPECT_TRUE(threw) << "context beyond max_context accepted";
  threw = false;
  try {
    model.prefill(100, IndexPlan::full(3), gpu::RunOptions{});
  } catch (const Error&) {
    threw = true;
  }
  EXPECT_TRUE(threw) << "plan of the wrong length accepted";
  // A failed prefill_ids ends the earlier request: decode_id must refuse, not continue it.
  const IndexPlan full = IndexPlan::full(s.num_layers);
  model.prefill_ids(std::vector<int32_t>(20, 1), full, gpu::RunOptions{});
  model.decode_id(2, full);  // the request exists
  threw = false;
  try {
    model.prefill_ids({1, 2, s.vocab_size}, full, gpu::RunOptions{});  // token id outside the vocabulary
  } catch (const Error&) {
    threw = true;
  }
  EXPECT_TRUE(threw) << "token id outside the vocabulary accepted";
  std::string decode_msg;
  try {
    model.decode_id(2, full);
  } catch (const Error& e) {
    decode_msg = e.what();
  }
  EXPECT_TRUE(decode_msg.find("no request") != std::string::npos)
      << "decode_id continued a request a failed prefill_ids had ended: '" << decode_msg << "'";
  // Caches and the score buffer for 4M tokens cannot fit: a one-line error, before any allocation.
  std::string msg;
  try {
    gpu::SyntheticGpuModel huge(s, int64_t{1} << 22, 1);
  } catch (const Error& e) {
    msg = e.what();
  }
  EXPECT_TRUE(msg.find("gpu memory") != std::string::npos) << "no out-of-memory error: '" << msg << "'";
}

TEST(CudaRunner, RealShapeTimings) {
  REQUIRE_GPU();
  // The 30B preset's per-layer GEMM shapes at an 8K chunk and the decode expert GEMV.
  std::mt19937 rng(21);
  const int m = 8192, H = 2048, I = 1536;
  DeviceBuffer x(size_t(m) * H * 2), w(size_t(2) * I * H * 2), y(size_t(m) * 2 * I * 2);
  gpu::fill_uniform_bf16(x.data(), size_t(m) * H, 1, 1, 1.0f, nullptr);
  gpu::fill_uniform_bf16(w.data(), size_t(2) * I * H, 1, 2, 0.03f, nullptr);
  gpu::Gemm gemm;
  gpu::GemmArgs a;
  a.x = x.data();
  a.ldx = H;
  a.w = w.data();
  a.ldw = H;
  a.y = y.data();
  a.ldy = 2 * I;
  a.m = m;
  a.n = 2 * I;
  a.k = H;
  const double ms = cuda::median_ms([&] { gemm.run(a, nullptr); });
  std::printf("[cuda-ops] gemm %dx%dx%d bf16: %.3f ms, %.1f TFLOP/s\n", m, 2 * I, H, ms,
              2.0 * m * 2 * I * H / (ms * 1e-3) / 1e12);
  const int E = 64, K = 4;
  DeviceBuffer we(size_t(E) * 2 * I * H * 2), xv(H * 2), yv(size_t(K) * 2 * I * 4);
  gpu::fill_uniform_bf16(we.data(), size_t(E) * 2 * I * H, 1, 3, 0.03f, nullptr);
  gpu::fill_uniform_bf16(xv.data(), H, 1, 4, 1.0f, nullptr);
  DeviceBuffer ids = DeviceBuffer::from(std::vector<int32_t>{3, 17, 40, 63});
  const double gms = cuda::median_ms([&] {
    gpu::gemv_bf16(we.data(), int64_t(2) * I * H, ids.as<int32_t>(), xv.data(), 0, yv.as<float>(), 2 * I, K, 2 * I, H,
                   nullptr);
  });
  std::printf("[cuda-ops] expert gemv %d x [%d x %d] bf16: %.4f ms, %.0f GB/s\n", K, 2 * I, H, gms,
              double(K) * 2 * I * H * 2 / (gms * 1e-3) / 1e9);
  EXPECT_TRUE(ms > 0 && gms > 0);
}

}  // namespace
}  // namespace indexcache
