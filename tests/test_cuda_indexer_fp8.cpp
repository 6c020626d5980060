// FP8 (e4m3) indexer scores (cuda::indexer_scores_fp8) and the row quantizer (cuda::quantize_rows_fp8).
//  - quantizer: against a host encoder written here (nearest e4m3 value from the table of all
//    finite codes, ties to the even code, saturating at 448) applied with the same f32 operations;
//    bytes and scales must match EXACTLY. Rows of very different magnitudes, an all-zero row, and a
//    row of hand-picked rounding ties (amax 448, so the values reach the encoder unscaled).
//  - scores: against cpu::indexer_scores on the DEQUANTIZED inputs (decode(q8) * q_scale,
//    decode(k8) * k_scale in f32, decoded by a host table). Row magnitudes vary by ~400x, so a scale
//    applied to the wrong row or key shows. Tolerance 1e-3 of the Cauchy-Schwarz bound
//    scale * sum_h |w_h| |q_h| |k_s| (fp8 products are exact; the f32 accumulation error is ~1e-5 of
//    it; a fragment or index error is ~1e-1 of it). -inf must match exactly; outputs are
//    NaN-poisoned first and the stride padding must keep the poison.
//  - real shapes: timings (median of 10, CUDA events) as "[cuda-ops]" lines, beside the bf16 kernel
//    on the same data in the same run, with sampled rows checked against the CPU.
// Without a CUDA device every GPU test is skipped.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/dsa_bf16.h"
#include "cuda_test_util.h"

namespace indexcache {
namespace {

using cuda::DeviceBuffer;
using namespace cuda_test;

constexpr int kDim = 128;
constexpr double kRelTol = 1e-3;

// ---------------------------------------------------------------- host e4m3

// E4M3: sign, 4 exponent bits (bias 7), 3 mantissa bits; exponent 0 is subnormal (m/8 * 2^-6);
// S.1111.111 is NaN; there are no infinities; the largest finite value is 448 (0x7E).
float e4m3_decode(uint8_t b) {
  const int e = (b >> 3) & 15, m = b & 7;
  if (e == 15 && m == 7) return std::nanf("");
  const float mag = e == 0 ? std::ldexp(static_cast<float>(m), -9) : std::ldexp(1.0f + m / 8.0f, e - 7);
  return (b & 0x80) ? -mag : mag;
}

// Decoded values of the finite non-negative codes 0x00..0x7E (increasing with the code).
const std::vector<float>& e4m3_table() {
  static const std::vector<float> t = [] {
    std::vector<float> v(127);
    for (int c = 0; c < 127; ++c) v[c] = e4m3_decode(static_cast<uint8_t>(c));
    return v;
  }();
  return t;
}

// Round to nearest, ties to the even code, saturate to +-448. Input finite.
uint8_t e4m3_encode(float x) {
  const std::vector<float>& t = e4m3_table();
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  const float a = std::fabs(x);
  if (a >= 448.0f) return sign | 0x7E;
  const int lo = static_cast<int>(std::upper_bound(t.begin(), t.end(), a) - t.begin()) - 1;  // t[lo] <= a
  if (t[lo] == a) return sign | static_cast<uint8_t>(lo);
  const int hi = lo + 1;
  const double dlo = static_cast<double>(a) - t[lo], dhi = static_cast<double>(t[hi]) - a;
  const int c = dlo < dhi ? lo : dhi < dlo ? hi : (lo % 2 == 0 ? lo : hi);
  return sign | static_cast<uint8_t>(c);
}

// The documented quantizer, in the same f32 operations as the device; `rotate`: the Walsh-Hadamard
// rotation first, butterfly by butterfly in the documented order (stride 1, 2, ..., 64; the sum
// where bit b of the index is clear, x[i^b] - x[i] where it is set), then times 1/sqrt(128).
void host_quantize_row(const uint16_t* in, uint8_t* out, float* scale, bool rotate = false) {
  float x[kDim];
  for (int i = 0; i < kDim; ++i) x[i] = from_bf16(in[i]);
  if (rotate) {
    for (int b = 1; b < kDim; b <<= 1) {
      float y[kDim];
      for (int i = 0; i < kDim; ++i) y[i] = (i & b) ? x[i ^ b] - x[i] : x[i] + x[i ^ b];
      std::memcpy(x, y, sizeof x);
    }
    for (float& v : x) v *= 0.088388347648318440550f;
  }
  float amax = 0.0f;
  for (int i = 0; i < kDim; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float inv = amax > 0.0f ? std::min(448.0f / amax, FLT_MAX) : 0.0f;
  for (int i = 0; i < kDim; ++i) out[i] = e4m3_encode(x[i] * inv);
  *scale = amax / 448.0f;
}

// rows x 128 random bf16 values; each row gets its own magnitude in [0.05, 20] (log-uniform).
std::vector<uint16_t> random_bf16_rows(int64_t rows, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f), lg(std::log(0.05f), std::log(20.0f));
  std::vector<uint16_t> v(static_cast<size_t>(rows) * kDim);
  for (int64_t r = 0; r < rows; ++r) {
    const float mag = std::exp(lg(rng));
    for (int i = 0; i < kDim; ++i) v[static_cast<size_t>(r) * kDim + i] = to_bf16(mag * u(rng));
  }
  return v;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

// ---------------------------------------------------------------- quantizer

void check_quantizer(const std::vector<uint16_t>& in, int64_t rows, const std::string& label, bool rotate = false) {
  std::vector<uint8_t> ref(static_cast<size_t>(rows) * kDim);
  std::vector<float> ref_scale(rows);
  for (int64_t r = 0; r < rows; ++r)
    host_quantize_row(in.data() + r * kDim, ref.data() + r * kDim, &ref_scale[r], rotate);

  DeviceBuffer din = DeviceBuffer::from(in);
  DeviceBuffer dout(ref.size()), dscale(rows * sizeof(float));
  dout.fill_bytes(0x7F);  // the e4m3 NaN code
  dscale.fill_bytes(0xFF);
  cuda::quantize_rows_fp8(din.data(), dout.data(), dscale.as<float>(), rows, nullptr, rotate);
  cuda::device_synchronize();
  const std::vector<uint8_t> got = dout.to_vector<uint8_t>(ref.size());
  const std::vector<float> got_scale = dscale.to_vector<float>(rows);
  int64_t bad = 0, bad_scale = 0;
  std::ostringstream first;
  for (int64_t r = 0; r < rows; ++r) {
    if (!same_bits(got_scale[r], ref_scale[r]) && bad_scale++ < 3)
      first << "  row " << r << ": scale " << got_scale[r] << " want " << ref_scale[r] << "\n";
    for (int i = 0; i < kDim; ++i) {
      const size_t j = static_cast<size_t>(r) * kDim + i;
      if (got[j] != ref[j] && bad++ < 5)
        first << "  row " << r << " col " << i << ": in " << from_bf16(in[j]) << " got 0x" << std::hex
              << int(got[j]) << " want 0x" << int(ref[j]) << std::dec << "\n";
    }
  }
  EXPECT_EQ(bad, 0) << label << ": bytes differ\n" << first.str();
  EXPECT_EQ(bad_scale, 0) << label << ": scales differ\n" << first.str();
}

TEST(CudaIndexerFp8, HostEncoderSelfCheck) {
  // The host encoder is the reference; check it on values whose encoding is known by hand.
  EXPECT_EQ(int(e4m3_encode(0.0f)), 0x00);
  EXPECT_EQ(int(e4m3_encode(1.0f)), 0x38);
  EXPECT_EQ(int(e4m3_encode(-2.0f)), 0xC0);
  EXPECT_EQ(int(e4m3_encode(448.0f)), 0x7E);
  EXPECT_EQ(int(e4m3_encode(1000.0f)), 0x7E);    // saturates
  EXPECT_EQ(int(e4m3_encode(-470.0f)), 0xFE);
  EXPECT_EQ(int(e4m3_encode(1.0625f)), 0x38);    // tie 1 | 1.125 -> 1 (even)
  EXPECT_EQ(int(e4m3_encode(1.1875f)), 0x3A);    // tie 1.125 | 1.25 -> 1.25 (even)
  EXPECT_EQ(int(e4m3_encode(1.05f)), 0x38);
  EXPECT_EQ(int(e4m3_encode(1.1f)), 0x39);
  EXPECT_EQ(int(e4m3_encode(std::ldexp(1.0f, -9))), 0x01);      // smallest subnormal
  EXPECT_EQ(int(e4m3_encode(std::ldexp(1.0f, -10))), 0x00);     // tie 0 | 2^-9 -> 0
  EXPECT_EQ(int(e4m3_encode(std::ldexp(3.0f, -10))), 0x02);     // tie 2^-9 | 2^-8 -> 2^-8 (even)
  EXPECT_EQ(int(e4m3_encode(std::ldexp(15.0f, -10))), 0x08);    // tie 7/8*2^-6 | 2^-6 -> 2^-6 (even)
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7F) == 0x7F) continue;
    EXPECT_EQ(int(e4m3_encode(e4m3_decode(static_cast<uint8_t>(c)))), c);
  }
}

TEST(CudaIndexerFp8, QuantizeRows) {
  REQUIRE_GPU();
  std::mt19937 rng(4001);
  for (int64_t rows : {1, 7, 8, 9, 1000}) {
    std::vector<uint16_t> in = random_bf16_rows(rows, rng);
    if (rows >= 7) {
      std::fill(in.begin() + 2 * kDim, in.begin() + 3 * kDim, uint16_t{0});  // all-zero row
      // A row of ties and edge values, amax 448 so inv == 1 and the values reach the encoder as is.
      const float special[] = {448.0f, -448.0f, 1.0625f, 1.1875f, -1.0625f, 3.0f, 0.0f,
                               std::ldexp(1.0f, -10), std::ldexp(3.0f, -10), std::ldexp(15.0f, -10),
                               std::ldexp(1.0f, -12), 240.0f, 232.0f, 248.0f, -0.3f, 17.0f};
      for (int i = 0; i < kDim; ++i) in[5 * kDim + i] = to_bf16(special[i % 16]);
    }
    check_quantizer(in, rows, "quantize_rows_fp8 rows=" + std::to_string(rows));
    check_quantizer(in, rows, "quantize_rows_fp8 (Hadamard) rows=" + std::to_string(rows), true);
  }
}

void dequantize(const std::vector<uint8_t>& b, const std::vector<float>& s, std::vector<float>* out);

// The rotation is orthonormal: dequantized rotated rows keep the dot products of the originals up
// to the e4m3 rounding (a wrong butterfly or scale would not). Whether it lowers that rounding error
// depends on the data: e4m3's exponent already serves rows with one large entry well (the H200 run
// of this test: 0.003 plain, 0.021 rotated, the outlier spread over every element), so both figures
// are only reported.
TEST(CudaIndexerFp8, HadamardKeepsDotProducts) {
  REQUIRE_GPU();
  std::mt19937 rng(4002);
  const int64_t rows = 64;
  std::vector<uint16_t> in = random_bf16_rows(rows, rng);
  for (int64_t r = 0; r < rows; r += 2) in[static_cast<size_t>(r) * kDim + (r % kDim)] = to_bf16(300.0f);  // outliers
  DeviceBuffer din = DeviceBuffer::from(in);
  auto quantized = [&](bool rotate) {
    DeviceBuffer dout(static_cast<size_t>(rows) * kDim), dscale(rows * sizeof(float));
    cuda::quantize_rows_fp8(din.data(), dout.data(), dscale.as<float>(), rows, nullptr, rotate);
    cuda::device_synchronize();
    std::vector<float> deq;
    dequantize(dout.to_vector<uint8_t>(static_cast<size_t>(rows) * kDim), dscale.to_vector<float>(rows), &deq);
    return deq;
  };
  const std::vector<float> plain = quantized(false), rot = quantized(true);
  double err_plain = 0, err_rot = 0, norm = 0;
  for (int64_t a = 0; a < rows; ++a)
    for (int64_t b = 0; b < rows; ++b) {
      double exact = 0, p = 0, q = 0;
      for (int i = 0; i < kDim; ++i) {
        exact += double(from_bf16(in[a * kDim + i])) * from_bf16(in[b * kDim + i]);
        p += double(plain[a * kDim + i]) * plain[b * kDim + i];
        q += double(rot[a * kDim + i]) * rot[b * kDim + i];
      }
      err_plain += (p - exact) * (p - exact);
      err_rot += (q - exact) * (q - exact);
      norm += exact * exact;
    }
  err_plain = std::sqrt(err_plain / norm);
  err_rot = std::sqrt(err_rot / norm);
  std::printf("[cuda-ops] e4m3 dot products of rows with outliers: rel L2 error %.3g plain, %.3g Hadamard-rotated\n",
              err_plain, err_rot);
  EXPECT_TRUE(err_rot < 0.05) << "rotated rows lost their dot products: rel L2 " << err_rot;
  EXPECT_TRUE(err_plain < 0.05) << "plain e4m3 rows lost their dot products: rel L2 " << err_plain;
}

// ---------------------------------------------------------------- scores

// The host inputs (qf, kf: dequantized, f32) and the fp8 bytes and per-row scales of q and k.
struct Fp8Inputs : IndexerHostInputs {
  std::vector<uint8_t> q8, k8;
  std::vector<float> qs, ks;  // per row scales
};

void dequantize(const std::vector<uint8_t>& b, const std::vector<float>& s, std::vector<float>* out) {
  out->resize(b.size());
  for (size_t i = 0; i < b.size(); ++i) (*out)[i] = e4m3_decode(b[i]) * s[i / kDim];
}

// pos_mode: see indexer_positions.
Fp8Inputs make_inputs(int tokens, int keys, int heads, int pos_mode, std::mt19937& rng) {
  Fp8Inputs in;
  in.tokens = tokens;
  in.keys = keys;
  in.heads = heads;
  in.dim = kDim;
  const int64_t qrows = static_cast<int64_t>(tokens) * heads;
  const std::vector<uint16_t> qb = random_bf16_rows(qrows, rng), kb = random_bf16_rows(keys, rng);
  in.q8.resize(qb.size());
  in.qs.resize(qrows);
  in.k8.resize(kb.size());
  in.ks.resize(keys);
  for (int64_t r = 0; r < qrows; ++r) host_quantize_row(qb.data() + r * kDim, in.q8.data() + r * kDim, &in.qs[r]);
  for (int64_t r = 0; r < keys; ++r) host_quantize_row(kb.data() + r * kDim, in.k8.data() + r * kDim, &in.ks[r]);
  dequantize(in.q8, in.qs, &in.qf);
  dequantize(in.k8, in.ks, &in.kf);
  in.w = uniform(static_cast<size_t>(qrows), rng);
  in.scale = 1.0f / std::sqrt(static_cast<float>(kDim));
  in.pos = indexer_positions(tokens, keys, pos_mode, rng);
  compute_indexer_bounds(&in);
  return in;
}

// Checks GPU rows [t0, t0 + n) (got: n rows of `stride`) against the CPU on the dequantized inputs.
void check_rows(const Fp8Inputs& in, int t0, int n, int64_t stride, const std::vector<float>& got, FloatCheck* fc) {
  check_indexer_rows(in, kRelTol, t0, n, stride, got, fc);
}

struct DeviceFp8 {
  DeviceBuffer q, qs, k, ks, w, pos;
  explicit DeviceFp8(const Fp8Inputs& in)
      : q(DeviceBuffer::from(in.q8)), qs(DeviceBuffer::from(in.qs)), k(DeviceBuffer::from(in.k8)),
        ks(DeviceBuffer::from(in.ks)), w(DeviceBuffer::from(in.w)), pos(DeviceBuffer::from(in.pos)) {}
  cuda::IndexerFp8Params params(const Fp8Inputs& in, float* scores, int64_t stride) const {
    cuda::IndexerFp8Params p;
    p.q = q.data();
    p.q_scale = qs.as<float>();
    p.k = k.data();
    p.k_scale = ks.as<float>();
    p.w = w.as<float>();
    p.positions = pos.as<int32_t>();
    p.scores = scores;
    p.scores_stride = stride;
    p.tokens = in.tokens;
    p.keys = in.keys;
    p.heads = in.heads;
    p.head_dim = kDim;
    p.scale = in.scale;
    return p;
  }
};

void run_case(int tokens, int keys, int heads, int pos_mode, int pad, std::mt19937& rng) {
  const Fp8Inputs in = make_inputs(tokens, keys, heads, pos_mode, rng);
  const int64_t stride = keys + pad;
  DeviceFp8 dev(in);
  DeviceBuffer dsc(static_cast<size_t>(tokens) * stride * sizeof(float));
  dsc.fill_bytes(0xFF);
  // Every kernel: 0 = default, 1 = mma.sync, 2 = wgmma e4m3 (16, 32, 64, 128 heads), 3 = 2 warpgroups (32).
  for (int variant : {0, 1, 2, 3}) {
    if (variant == 2 && !(heads == 16 || heads == 32 || heads == 64 || heads == 128)) continue;
    if (variant == 3 && heads != 32) continue;
    dsc.fill_bytes(0xFF);
    cuda::IndexerFp8Params p = dev.params(in, dsc.as<float>(), stride);
    p.variant = variant;
    cuda::indexer_scores_fp8(p);
    cuda::device_synchronize();
    const std::vector<float> got = dsc.to_vector<float>(static_cast<size_t>(tokens) * stride);
    FloatCheck fc("t", "s");
    check_rows(in, 0, tokens, stride, got, &fc);
    EXPECT_TRUE(fc.bad == 0) << "indexer_fp8 variant " << variant << " T=" << tokens << " S=" << keys
                             << " H=" << heads << " pos_mode=" << pos_mode << " pad=" << pad << ": " << fc.summary();
  }
}

TEST(CudaIndexerFp8, ScoresSmallShapes) {
  REQUIRE_GPU();
  std::mt19937 rng(5001);
  int i = 0;
  for (int heads : {8, 32, 64})
    for (int tokens : {1, 3, 37, 130})
      for (int keys : {1, 17, 1000, 5000}) {
        run_case(tokens, keys, heads, i % 3, i % 3, rng);
        ++i;
      }
}

TEST(CudaIndexerFp8, ScoresOtherHeadCounts) {
  REQUIRE_GPU();
  std::mt19937 rng(5002);
  for (int heads : {16, 24, 40, 96, 128}) {
    run_case(37, 1000, heads, 0, 1, rng);
    run_case(19, 3001, heads, 2, 0, rng);
  }
  // Long key chunks per block (three-buffer pipeline over many tiles), and few queries with many keys.
  run_case(300, 9000, 32, 1, 3, rng);
  run_case(2, 40000, 64, 0, 0, rng);
  run_case(5, 70000, 8, 2, 1, rng);
}

TEST(CudaIndexerFp8, RejectsBadShapes) {
  // Argument checks happen before any launch, so this runs without a GPU too.
  auto throws = [](int heads, int head_dim, bool null_scale, int variant = 0, int keys = 1) {
    cuda::IndexerFp8Params p;
    alignas(16) static char dummy[64];
    p.q = dummy;
    p.q_scale = null_scale ? nullptr : reinterpret_cast<const float*>(dummy);
    p.k = dummy;
    p.k_scale = reinterpret_cast<const float*>(dummy);
    p.w = reinterpret_cast<const float*>(dummy);
    p.positions = reinterpret_cast<const int32_t*>(dummy);
    p.scores = reinterpret_cast<float*>(dummy);
    p.tokens = 1;
    p.keys = keys;
    p.scores_stride = keys;
    p.heads = heads;
    p.head_dim = head_dim;
    p.variant = variant;
    try {
      cuda::indexer_scores_fp8(p);
    } catch (const std::exception&) {
      return true;
    }
    return false;
  };
  EXPECT_TRUE(throws(12, 128, false));
  EXPECT_TRUE(throws(136, 128, false));
  EXPECT_TRUE(throws(32, 64, false));
  EXPECT_TRUE(throws(32, 128, true));
  EXPECT_TRUE(throws(32, 128, false, 4));  // no such kernel variant
  EXPECT_TRUE(throws(32, 128, false, 0, (1 << 30) + 1));  // beyond the int tile arithmetic
  auto quant_throws = [](int64_t rows, bool misaligned) {
    alignas(16) static char dummy[64];
    try {
      cuda::quantize_rows_fp8(dummy + (misaligned ? 2 : 0), dummy, reinterpret_cast<float*>(dummy), rows);
    } catch (const std::exception&) {
      return true;
    }
    return false;
  };
  EXPECT_TRUE(quant_throws(-1, false));
  EXPECT_TRUE(quant_throws(1, true));
}

// ---------------------------------------------------------------- real shapes and timings

TEST(CudaIndexerFp8, RealShapeTimings) {
  REQUIRE_GPU();
  std::printf("[cuda-ops] device: %s\n", cuda::device_description().c_str());
  std::mt19937 rng(6001);
  const int tokens = 4096, heads = 32, max_keys = 204800;
  const int64_t qrows = static_cast<int64_t>(tokens) * heads;

  // bf16 inputs, quantized on the device (timed); the host reference uses the device's bytes.
  const std::vector<uint16_t> qb = random_bf16_rows(qrows, rng), kb = random_bf16_rows(max_keys, rng);
  DeviceBuffer dqb = DeviceBuffer::from(qb), dkb = DeviceBuffer::from(kb);
  DeviceBuffer dq8(qb.size()), dqs(qrows * sizeof(float)), dk8(kb.size()), dks(max_keys * sizeof(float));
  cuda::quantize_rows_fp8(dqb.data(), dq8.data(), dqs.as<float>(), qrows);
  cuda::quantize_rows_fp8(dkb.data(), dk8.data(), dks.as<float>(), max_keys);
  cuda::device_synchronize();
  {
    const double ms = cuda::median_ms([&] { cuda::quantize_rows_fp8(dkb.data(), dk8.data(), dks.as<float>(), max_keys); });
    const double gb = static_cast<double>(max_keys) * (kDim * 3 + 4) * 1e-9;
    std::printf("[cuda-ops] quantize_rows_fp8 %d rows x %d: %.4f ms, %.0f GB/s\n", max_keys, kDim, ms, gb / (ms * 1e-3));
  }
  Fp8Inputs in;
  in.tokens = tokens;
  in.heads = heads;
  in.keys = max_keys;
  in.dim = kDim;
  in.q8 = dq8.to_vector<uint8_t>(qb.size());
  in.qs = dqs.to_vector<float>(qrows);
  in.k8 = dk8.to_vector<uint8_t>(kb.size());
  in.ks = dks.to_vector<float>(max_keys);
  {  // spot check of the device quantizer at this size against the host one
    int bad = 0;
    for (int64_t r : {int64_t{0}, int64_t{12345}, int64_t{max_keys - 1}}) {
      uint8_t ref[kDim];
      float s = 0;
      host_quantize_row(kb.data() + r * kDim, ref, &s);
      if (!same_bits(s, in.ks[r]) || std::memcmp(ref, in.k8.data() + r * kDim, kDim) != 0) ++bad;
    }
    EXPECT_EQ(bad, 0) << "quantize_rows_fp8 on the real-shape keys differs from the host";
  }
  dequantize(in.q8, in.qs, &in.qf);
  dequantize(in.k8, in.ks, &in.kf);
  in.w = uniform(static_cast<size_t>(qrows), rng);
  in.scale = 1.0f / std::sqrt(static_cast<float>(kDim));
  DeviceBuffer dw = DeviceBuffer::from(in.w);
  DeviceBuffer dsc(static_cast<size_t>(tokens) * max_keys * sizeof(float));

  // Parameters over the real-shape inputs: the first `n` queries at `positions`, `keys` keys.
  auto params = [&](const DeviceBuffer& positions, float* scores, int n, int keys) {
    cuda::IndexerFp8Params p;
    p.q = dq8.data();
    p.q_scale = dqs.as<float>();
    p.k = dk8.data();
    p.k_scale = dks.as<float>();
    p.w = dw.as<float>();
    p.positions = positions.as<int32_t>();
    p.scores = scores;
    p.scores_stride = keys;
    p.tokens = n;
    p.keys = keys;
    p.heads = heads;
    p.scale = in.scale;
    return p;
  };
  for (int keys : {65536, 131072, 204800}) {
    std::vector<int32_t> pos(tokens);
    for (int t = 0; t < tokens; ++t) pos[t] = keys - tokens + t;
    DeviceBuffer dpos = DeviceBuffer::from(pos);
    cuda::IndexerFp8Params p = params(dpos, dsc.as<float>(), tokens, keys);
    p.variant = 1;
    const double ms_sync = cuda::median_ms([&] { cuda::indexer_scores_fp8(p); });
    p.variant = 3;
    dsc.fill_bytes(0xFF);
    cuda::indexer_scores_fp8(p);
    cuda::device_synchronize();
    const double ms_2wg = cuda::median_ms([&] { cuda::indexer_scores_fp8(p); });
    // Sampled rows of the scores now in dsc against the CPU, on this key count and positions
    // (check_rows reads q / w rows of t and keys [0, keys): views into the full arrays).
    auto check_sampled = [&](std::initializer_list<int> rows, const char* what) {
      Fp8Inputs view;
      view.tokens = tokens;
      view.heads = heads;
      view.keys = keys;
      view.dim = kDim;
      view.scale = in.scale;
      view.pos = pos;
      view.qf = in.qf;
      view.w = in.w;
      view.kf.assign(in.kf.begin(), in.kf.begin() + static_cast<size_t>(keys) * kDim);
      compute_indexer_bounds(&view, rows);
      FloatCheck fc("t", "s");
      for (int t : rows) check_rows(view, t, 1, keys, download_range(dsc, static_cast<size_t>(t) * keys, keys), &fc);
      EXPECT_TRUE(fc.bad == 0) << "indexer_fp8 " << what << " real shape S=" << keys << ": " << fc.summary();
    };
    check_sampled({tokens / 3}, "2-warpgroup");  // before the default kernel overwrites its rows
    p.variant = 0;
    dsc.fill_bytes(0xFF);
    cuda::indexer_scores_fp8(p);
    cuda::device_synchronize();
    const double ms = cuda::median_ms([&] { cuda::indexer_scores_fp8(p); });
    const double tflop = 2.0 * heads * kDim * visible_pairs(pos, keys) * 1e-12;
    const double fp8_peak = 2.0 * cuda_test::bf16_peak_tflops();

    // The bf16 kernel on the same (bf16) data, same run, for the ratio.
    cuda::IndexerBf16Params pb;
    pb.q = dqb.data();
    pb.k = dkb.data();
    pb.w = dw.as<float>();
    pb.positions = dpos.as<int32_t>();
    pb.scores = dsc.as<float>();
    pb.scores_stride = keys;
    pb.tokens = tokens;
    pb.keys = keys;
    pb.heads = heads;
    pb.scale = in.scale;
    const double ms_b = cuda::median_ms([&] { cuda::indexer_scores_bf16(pb); });
    std::printf("[cuda-ops] indexer_fp8 wgmma T=%d S=%d H=%d D=%d (last chunk): %.3f ms, %.1f TFLOP/s "
                "(%.1f %% of the fp8 peak %.0f = 2x measured bf16); 2 warpgroups %.3f ms; mma.sync fp8 kernel "
                "%.3f ms; bf16 (default) kernel same run %.3f ms, %.1f TFLOP/s, fp8 speedup %.2fx\n",
                tokens, keys, heads, kDim, ms, tflop / (ms * 1e-3), 100.0 * tflop / (ms * 1e-3) / fp8_peak, fp8_peak,
                ms_2wg, ms_sync, ms_b, tflop / (ms_b * 1e-3), ms_b / ms);

    // Rerun fp8 (the bf16 timing overwrote the scores), then sampled rows against the CPU.
    dsc.fill_bytes(0xFF);
    cuda::indexer_scores_fp8(p);
    cuda::device_synchronize();
    check_sampled({0, tokens / 2 + 7, tokens - 1}, "default");
  }

  // Decode: one query at the end of a 204800-key cache.
  {
    const int keys = max_keys;
    const std::vector<int32_t> pos = {keys - 1};
    DeviceBuffer dpos = DeviceBuffer::from(pos);
    DeviceBuffer d1(static_cast<size_t>(keys) * sizeof(float));
    d1.fill_bytes(0xFF);
    cuda::IndexerFp8Params p = params(dpos, d1.as<float>(), 1, keys);
    const double gb = (static_cast<double>(keys) * (kDim + 4) + static_cast<double>(keys) * 4) * 1e-9;
    p.variant = 2;
    const double ms_wgmma = cuda::median_ms([&] { cuda::indexer_scores_fp8(p); });
    p.variant = 0;  // the default: mma.sync for one query
    cuda::indexer_scores_fp8(p);
    cuda::device_synchronize();
    const std::vector<float> got = d1.to_vector<float>(keys);
    const double ms = cuda::median_ms([&] { cuda::indexer_scores_fp8(p); });
    std::printf("[cuda-ops] indexer_fp8 decode T=1 S=%d H=%d: default %.4f ms, %.0f GB/s (keys + scales read, scores "
                "written); forced wgmma %.4f ms\n",
                keys, heads, ms, gb / (ms * 1e-3), ms_wgmma);
    Fp8Inputs view;
    view.tokens = 1;
    view.heads = heads;
    view.keys = keys;
    view.dim = kDim;
    view.scale = in.scale;
    view.pos = pos;
    view.qf.assign(in.qf.begin(), in.qf.begin() + static_cast<size_t>(heads) * kDim);
    view.w.assign(in.w.begin(), in.w.begin() + heads);
    view.kf = in.kf;
    compute_indexer_bounds(&view);
    FloatCheck fc("t", "s");
    check_rows(view, 0, 1, keys, got, &fc);
    EXPECT_TRUE(fc.bad == 0) << "indexer_fp8 decode: " << fc.summary();
  }
}

}  // namespace
}  // namespace indexcache
