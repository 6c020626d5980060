// Tensor-core indexer scores (cuda::indexer_scores_bf16) and radix top-k (cuda::topk_radix) against
// the CPU backend ops (src/backend/cpu/kernels.h) on fresh random inputs from fixed seeds.
//  - indexer: the CPU runs on the SAME bf16-rounded q and k (converted to f32), so the only
//    difference is f32 summation order; tolerance 5e-4 of the Cauchy-Schwarz bound
//    scale * sum_h |w_h| |q_h| |k_s| (f32 accumulation error is ~1e-5 of it; any fragment or index
//    error is ~1e-1 of it). -inf must match exactly; scores are NaN-poisoned before the run, so an
//    unwritten element fails, and the stride padding (s >= keys) must still hold the poison.
//  - top-k: on identical scores the selected SET must equal the CPU's exactly (ties included: the
//    lower index wins on both); indices are 0x7F7F7F7F-poisoned first.
//  - real shapes: timings (median of 10, CUDA events) printed as "[cuda-ops]" lines, with sampled
//    rows checked against the CPU.
// Without a CUDA device every GPU test is skipped.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
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
constexpr double kRelTol = 5e-4;

// Random bf16 values: the device bits and the same values as f32 for the CPU.
void random_bf16(size_t n, std::mt19937& rng, std::vector<uint16_t>* bits, std::vector<float>* f32) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  bits->resize(n);
  f32->resize(n);
  for (size_t i = 0; i < n; ++i) {
    (*bits)[i] = to_bf16(dist(rng));
    (*f32)[i] = from_bf16((*bits)[i]);
  }
}

// ---------------------------------------------------------------- indexer

// The host inputs (qf, kf: the bf16 values as f32) and the device bits of q and k.
struct IndexerInputs : IndexerHostInputs {
  std::vector<uint16_t> qb, kb;
};

// pos_mode: see indexer_positions.
IndexerInputs make_indexer_inputs(int tokens, int keys, int heads, int pos_mode, std::mt19937& rng) {
  IndexerInputs in;
  in.tokens = tokens;
  in.keys = keys;
  in.heads = heads;
  in.dim = kDim;
  random_bf16(static_cast<size_t>(tokens) * heads * kDim, rng, &in.qb, &in.qf);
  random_bf16(static_cast<size_t>(keys) * kDim, rng, &in.kb, &in.kf);
  in.w = uniform(static_cast<size_t>(tokens) * heads, rng);
  in.scale = 1.0f / std::sqrt(static_cast<float>(kDim));
  in.pos = indexer_positions(tokens, keys, pos_mode, rng);
  compute_indexer_bounds(&in);
  return in;
}

// Checks rows [t0, t0 + n) of GPU scores (got, n rows of stride) against the CPU.
void check_indexer_rows(const IndexerInputs& in, int t0, int n, int64_t stride, const std::vector<float>& got,
                        FloatCheck* fc) {
  cuda_test::check_indexer_rows(in, kRelTol, t0, n, stride, got, fc);
}

struct DeviceIndexer {
  DeviceBuffer q, k, w, pos;
  explicit DeviceIndexer(const IndexerInputs& in)
      : q(DeviceBuffer::from(in.qb)), k(DeviceBuffer::from(in.kb)), w(DeviceBuffer::from(in.w)),
        pos(DeviceBuffer::from(in.pos)) {}
  cuda::IndexerBf16Params params(const IndexerInputs& in, float* scores, int64_t stride) const {
    cuda::IndexerBf16Params p;
    p.q = q.data();
    p.k = k.data();
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

void run_indexer_case(int tokens, int keys, int heads, int pos_mode, int pad, std::mt19937& rng) {
  const IndexerInputs in = make_indexer_inputs(tokens, keys, heads, pos_mode, rng);
  const int64_t stride = keys + pad;
  DeviceIndexer dev(in);
  DeviceBuffer dsc(static_cast<size_t>(tokens) * stride * sizeof(float));
  // Every kernel: 0 = default, 1 = mma.sync, 2 = wgmma (16, 32, 64, 128 heads), 3 = wgmma 2 warpgroups (32).
  for (int variant : {0, 1, 2, 3}) {
    if (variant == 2 && !(heads == 16 || heads == 32 || heads == 64 || heads == 128)) continue;
    if (variant == 3 && heads != 32) continue;
    dsc.fill_bytes(0xFF);
    cuda::IndexerBf16Params p = dev.params(in, dsc.as<float>(), stride);
    p.variant = variant;
    cuda::indexer_scores_bf16(p);
    cuda::device_synchronize();
    const std::vector<float> got = dsc.to_vector<float>(static_cast<size_t>(tokens) * stride);
    FloatCheck fc("t", "s");
    check_indexer_rows(in, 0, tokens, stride, got, &fc);
    EXPECT_TRUE(fc.bad == 0) << "indexer_bf16 variant " << variant << " T=" << tokens << " S=" << keys
                             << " H=" << heads << " pos_mode=" << pos_mode << " pad=" << pad << ": " << fc.summary();
  }
}

TEST(CudaDsaIndexer, ScoresSmallShapes) {
  REQUIRE_GPU();
  std::mt19937 rng(1001);
  int i = 0;
  for (int heads : {8, 32, 64})
    for (int tokens : {1, 3, 37, 130})
      for (int keys : {1, 17, 1000, 5000}) {
        run_indexer_case(tokens, keys, heads, i % 3, i % 3, rng);
        ++i;
      }
}

TEST(CudaDsaIndexer, ScoresOtherHeadCounts) {
  REQUIRE_GPU();
  std::mt19937 rng(1002);
  for (int heads : {16, 24, 40, 96, 128}) {
    run_indexer_case(37, 1000, heads, 0, 1, rng);
    run_indexer_case(19, 3001, heads, 2, 0, rng);
  }
  // Longer chunks of keys per block and more query blocks than key chunks, and vice versa.
  run_indexer_case(300, 9000, 32, 1, 3, rng);
  run_indexer_case(2, 40000, 64, 0, 0, rng);
}

TEST(CudaDsaIndexer, RejectsBadShapes) {
  // Argument checks happen before any launch, so this runs without a GPU too.
  auto throws = [](int heads, int head_dim, int variant = 0, int keys = 1) {
    cuda::IndexerBf16Params p;
    alignas(16) static char dummy[64];
    p.q = dummy;
    p.k = dummy;
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
      cuda::indexer_scores_bf16(p);
    } catch (const std::exception&) {
      return true;
    }
    return false;
  };
  EXPECT_TRUE(throws(12, 128));
  EXPECT_TRUE(throws(136, 128));
  EXPECT_TRUE(throws(32, 64));
  EXPECT_TRUE(throws(32, 128, 4));   // no such kernel variant
  EXPECT_TRUE(throws(64, 128, 3));   // the 2-warpgroup kernel is built for 32 heads only
  EXPECT_TRUE(throws(32, 128, -1));
  EXPECT_TRUE(throws(24, 128, 2));   // wgmma forced on a head count it does not serve
  EXPECT_TRUE(throws(32, 128, 0, (1 << 30) + 1));  // beyond the int tile arithmetic
  auto topk_throws = [](int k) {
    cuda::TopkRadixParams p;
    alignas(16) static char dummy[64];
    p.scores = reinterpret_cast<const float*>(dummy);
    p.valid = reinterpret_cast<const int32_t*>(dummy);
    p.indices = reinterpret_cast<int32_t*>(dummy);
    p.scores_stride = 1;
    p.tokens = 1;
    p.k = k;
    try {
      cuda::topk_radix(p);
    } catch (const std::exception&) {
      return true;
    }
    return false;
  };
  EXPECT_TRUE(topk_throws(0));
  EXPECT_TRUE(topk_throws(2049));
  {  // a non-null scratch smaller than topk_radix_scratch_bytes is rejected before any launch
    cuda::TopkRadixParams p;
    alignas(16) static char dummy[64];
    p.scores = reinterpret_cast<const float*>(dummy);
    p.valid = reinterpret_cast<const int32_t*>(dummy);
    p.indices = reinterpret_cast<int32_t*>(dummy);
    p.scores_stride = 204800;
    p.tokens = 1;
    p.k = 2048;
    p.scratch = dummy;
    p.scratch_bytes = sizeof(dummy);
    EXPECT_TRUE(cuda::topk_radix_scratch_bytes(p) > sizeof(dummy));
    bool threw = false;
    try {
      cuda::topk_radix(p);
    } catch (const std::exception&) {
      threw = true;
    }
    EXPECT_TRUE(threw);
    p.tokens = 9;  // many rows: single-block path, no scratch needed
    EXPECT_EQ(cuda::topk_radix_scratch_bytes(p), static_cast<size_t>(0));
    p.tokens = 1;
    p.scores_stride = 8192;  // short rows: single-block path
    EXPECT_EQ(cuda::topk_radix_scratch_bytes(p), static_cast<size_t>(0));
  }
}

// ---------------------------------------------------------------- top-k

enum class Kind {
  kUniform,    // U(-1, 1): distinct values, the threshold's first-digit bin fits the buffer
  kNarrow,     // U(0.5, 1): one exponent, the top bin overflows the buffer -> a second global pass
  kVeryNarrow, // 1 + U(0, 2^-12): first two digits shared -> three global passes
  kLevels4,    // 4 levels: tens of thousands of exact ties at the threshold (ordered fallback)
  kLevels64,   // 64 levels: hundreds of ties at the threshold, resolved in the buffer
  kSomeInf,    // U(-1, 1) with 30 % -inf
  kMostlyInf,  // 1000 finite values, the rest -inf: ties at -inf
  kRamp,       // increasing with the index: every survivor sits in the last blocks of the row
  kRampTies,   // increasing in steps of 100 equal values: skewed and tied
  // Rows aimed at the sampled single pass of long rows (valid >= 32768; see topk_radix.cu):
  kGauss,       // N(0.3, 0.8): like indexer scores, the threshold bin fits the buffer
  kAllEqual,    // every score 0.5: ties everywhere (ordered heavy-tie fallback)
  kNanMix,      // U(-1, 1) with 40 % NaN (NaN ranks below -inf)
  kMostlyNan,   // NaN, 700 scores 1.0 and 500 -inf: ties at 1.0, then at -inf, then NaN
  kAllNegInf,   // every score -inf
  kHotWindows,  // U(-1, 0) with 1..4 windows (100..20000 wide) of U(a, a + 1), a in {0, 0.5, 2}
  kExactK,      // U(-1, 0), 500 scores in [4, 4.5), 1548 in [1, 1.1): k = 2048 takes the whole bin
  kSampleDecoy, // U(-1, 0); U(1, 2) exactly on the first 100 sampled runs: the sample overestimates
  kSampleMiss,  // U(-1, 0); 12000 scores in [1, 2) between the sampled runs: the buffer overflows
};

// The sampled runs of a row of n >= 32768 valid scores in topk_radix.cu: 256 runs of 32 consecutive
// elements starting at c * ((n - 32) / 255). Only the kSampleDecoy / kSampleMiss rows use this, to
// steer the kernel into its fallbacks; a change of the sample keeps the tests valid (they then just
// exercise other paths).
bool in_sampled_run(int64_t s, int64_t n) {
  const int64_t step = (n - 32) / 255;
  return step >= 32 && s < 256 * step && s % step < 32;
}

std::vector<float> make_topk_scores(int rows, int64_t stride, Kind kind, std::mt19937& rng) {
  std::vector<float> v(static_cast<size_t>(rows) * stride);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f), u01(0.0f, 1.0f);
  std::uniform_int_distribution<int> l4(0, 3), l64(0, 63);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  for (int t = 0; t < rows; ++t) {
    std::vector<int64_t> finite_slots;
    for (int64_t s = 0; s < stride; ++s) {
      float x = 0;
      switch (kind) {
        case Kind::kUniform: x = u(rng); break;
        case Kind::kNarrow: x = 0.5f + 0.5f * u01(rng); if (x >= 1.0f) x = 0.5f; break;
        case Kind::kVeryNarrow: x = 1.0f + std::ldexp(u01(rng), -12); break;
        case Kind::kLevels4: x = 0.25f * static_cast<float>(l4(rng)); break;
        case Kind::kLevels64: x = static_cast<float>(l64(rng)) - 20.0f; break;
        case Kind::kSomeInf: x = u01(rng) < 0.3f ? -kInf : u(rng); break;
        case Kind::kMostlyInf: x = -kInf; break;
        case Kind::kRamp: x = static_cast<float>(s) * 1e-6f; break;
        case Kind::kRampTies: x = static_cast<float>(s / 100); break;
        case Kind::kGauss: x = 0.3f + 0.8f * gauss(rng); break;
        case Kind::kAllEqual: x = 0.5f; break;
        case Kind::kNanMix: x = u01(rng) < 0.4f ? std::nanf("") : u(rng); break;
        case Kind::kMostlyNan: x = std::nanf(""); break;
        case Kind::kAllNegInf: x = -kInf; break;
        case Kind::kHotWindows:
        case Kind::kExactK:
        case Kind::kSampleMiss: x = -u01(rng); break;
        case Kind::kSampleDecoy: x = in_sampled_run(s, stride) && s < 100 * ((stride - 32) / 255) ? 1.0f + u01(rng) : -u01(rng); break;
      }
      v[static_cast<size_t>(t) * stride + s] = x;
    }
    float* r = v.data() + static_cast<size_t>(t) * stride;
    std::uniform_int_distribution<int64_t> any(0, stride - 1);
    if (kind == Kind::kMostlyInf)
      for (int i = 0; i < 1000; ++i) r[any(rng)] = u(rng);
    if (kind == Kind::kMostlyNan) {
      for (int i = 0; i < 500; ++i) r[any(rng)] = -kInf;
      for (int i = 0; i < 700; ++i) r[any(rng)] = 1.0f;
    }
    if (kind == Kind::kHotWindows) {
      const int windows = std::uniform_int_distribution<int>(1, 4)(rng);
      for (int w = 0; w < windows; ++w) {
        const int64_t width = std::min<int64_t>(stride, std::uniform_int_distribution<int64_t>(100, 20000)(rng));
        const int64_t off = std::uniform_int_distribution<int64_t>(0, stride - width)(rng);
        const float a = std::array<float, 3>{0.0f, 0.5f, 2.0f}[std::uniform_int_distribution<int>(0, 2)(rng)];
        for (int64_t s = off; s < off + width; ++s) r[s] = a + u01(rng);
      }
    }
    if (kind == Kind::kExactK) {  // distinct positions: a random permutation's first 2048
      std::vector<int64_t> perm(stride);
      for (int64_t s = 0; s < stride; ++s) perm[s] = s;
      std::shuffle(perm.begin(), perm.end(), rng);
      for (int i = 0; i < 2048 && i < stride; ++i) r[perm[i]] = i < 500 ? 4.0f + 0.5f * u01(rng) : 1.0f + 0.1f * u01(rng);
    }
    if (kind == Kind::kSampleMiss) {  // up to 12000 distinct positions outside the sampled runs
      std::vector<int64_t> free_slots;
      for (int64_t s = 0; s < stride; ++s)
        if (!in_sampled_run(s, stride)) free_slots.push_back(s);
      std::shuffle(free_slots.begin(), free_slots.end(), rng);
      const size_t m = std::min<size_t>(12000, free_slots.size() / 2);
      for (size_t i = 0; i < m; ++i) r[free_slots[i]] = 1.0f + u01(rng);
    }
  }
  return v;
}

// The documented order of topk_radix's list for a row of n > k valid scores, given its selected set
// in index order (from the CPU): the global refinement of topk_radix.cu (digits of 12, 10, 10 bits
// until at most 8192 elements match the prefix, or all of the matching ones are needed, or 32 bits
// are fixed) gives a prefix; the selected elements above it come first, then the selected ones that
// match it, each in index order; one index-ordered list when all matching ones are selected or
// more than 8192 share the full key (heavy-tie fallback).
std::vector<int32_t> expected_topk_list(const float* row, int n, int k, const std::vector<int32_t>& selected) {
  auto key = [&](int i) {
    const float f = row[i];
    if (f != f) return 0u;
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  };
  uint32_t prefix = 0, mask = 0;
  int fixed = 0, krem = k, cnt = n;
  while (cnt > 8192 && cnt > krem && fixed < 32) {
    const int d = fixed == 0 ? 12 : 10, shift = 32 - fixed - d, nb = 1 << d;
    std::vector<int> hist(nb, 0);
    for (int i = 0; i < n; ++i)
      if ((key(i) & mask) == prefix) ++hist[(key(i) >> shift) & (nb - 1)];
    int b = nb - 1, above = 0;
    while (above + hist[b] < krem) above += hist[b--];
    prefix |= static_cast<uint32_t>(b) << shift;
    mask |= static_cast<uint32_t>(nb - 1) << shift;
    krem -= above;
    cnt = hist[b];
    fixed += d;
  }
  if (cnt == krem || cnt > 8192) return selected;
  std::vector<int32_t> list;
  for (int32_t i : selected)
    if ((key(i) & mask) > prefix) list.push_back(i);
  for (int32_t i : selected)
    if ((key(i) & mask) == prefix) list.push_back(i);
  return list;
}

// The CPU top-k of one row (valid entries of `row`), sorted by index: the set to compare with.
std::vector<int32_t> cpu_topk_sorted(const float* row, int32_t valid, int k) {
  std::vector<int32_t> ref(k);
  TopkParams c;
  c.scores = row;
  c.scores_stride = valid;
  c.valid = &valid;
  c.indices = ref.data();
  c.tokens = 1;
  c.k = k;
  cpu::topk(c);
  std::sort(ref.begin(), ref.end());
  return ref;
}

// One topk_radix run whose lists are kept, then the median time of more runs, which must leave the
// lists unchanged (`stable`).
struct TimedTopk {
  std::vector<int32_t> lists;  // [rows][k]
  double ms = 0;
  bool stable = false;
};
TimedTopk run_timed_topk(const float* dev_scores, int64_t stride, const std::vector<int32_t>& valid, int k) {
  const int rows = static_cast<int>(valid.size());
  DeviceBuffer dv = DeviceBuffer::from(valid);
  DeviceBuffer di(static_cast<size_t>(rows) * k * sizeof(int32_t));
  di.fill_bytes(0x7F);
  cuda::TopkRadixParams p;
  p.scores = dev_scores;
  p.scores_stride = stride;
  p.valid = dv.as<int32_t>();
  p.indices = di.as<int32_t>();
  p.tokens = rows;
  p.k = k;
  cuda::topk_radix(p);
  cuda::device_synchronize();
  TimedTopk r;
  r.lists = di.to_vector<int32_t>(static_cast<size_t>(rows) * k);
  r.ms = cuda::median_ms([&] { cuda::topk_radix(p); });
  r.stable = di.to_vector<int32_t>(static_cast<size_t>(rows) * k) == r.lists;
  return r;
}

// GPU topk_radix vs CPU topk on the same scores: per row, the sorted index lists must be equal, and
// the list itself must be the documented one (expected_topk_list).
void check_topk_sets(const std::vector<float>& scores, int rows, int64_t stride, const std::vector<int32_t>& valid,
                     int k, const std::string& label) {
  std::vector<int32_t> ref(static_cast<size_t>(rows) * k);
  TopkParams p;
  p.scores = scores.data();
  p.scores_stride = stride;
  p.valid = valid.data();
  p.indices = ref.data();
  p.tokens = rows;
  p.k = k;
  cpu::topk(p);

  DeviceBuffer ds = DeviceBuffer::from(scores), dv = DeviceBuffer::from(valid);
  DeviceBuffer di(ref.size() * sizeof(int32_t));
  di.fill_bytes(0x7F);
  cuda::TopkRadixParams g;
  g.scores = ds.as<float>();
  g.scores_stride = stride;
  g.valid = dv.as<int32_t>();
  g.indices = di.as<int32_t>();
  g.tokens = rows;
  g.k = k;
  cuda::topk_radix(g);
  cuda::device_synchronize();
  const std::vector<int32_t> got = di.to_vector<int32_t>(ref.size());
  // The index lists (not only the sets) are deterministic: a second run writes the same lists in the
  // same order, which is what makes a CUDA-graph replay of a decode step equal its eager run.
  DeviceBuffer di2(ref.size() * sizeof(int32_t));
  di2.fill_bytes(0x7F);
  g.indices = di2.as<int32_t>();
  cuda::topk_radix(g);
  cuda::device_synchronize();
  EXPECT_TRUE(di2.to_vector<int32_t>(ref.size()) == got) << label << ": a second run gave another order";
  // Multi-block path (few rows, long rows, caller scratch): the lists must be identical to the
  // single-block ones (same sets and the same order), on two runs with a poisoned scratch.
  const size_t scratch_bytes = cuda::topk_radix_scratch_bytes(g);
  if (scratch_bytes > 0) {
    DeviceBuffer dscr(scratch_bytes);
    for (int run = 0; run < 2; ++run) {
      dscr.fill_bytes(0x7F);
      DeviceBuffer di3(ref.size() * sizeof(int32_t));
      di3.fill_bytes(0x7F);
      g.indices = di3.as<int32_t>();
      g.scratch = dscr.data();
      g.scratch_bytes = scratch_bytes;
      cuda::topk_radix(g);
      cuda::device_synchronize();
      const std::vector<int32_t> multi = di3.to_vector<int32_t>(ref.size());
      int diff_rows = 0;
      for (int t = 0; t < rows; ++t)
        if (!std::equal(multi.begin() + static_cast<size_t>(t) * k, multi.begin() + static_cast<size_t>(t + 1) * k,
                        got.begin() + static_cast<size_t>(t) * k))
          ++diff_rows;
      EXPECT_EQ(diff_rows, 0) << label << ": multi-block run " << run << ": " << diff_rows
                              << " rows whose list differs from the single-block list";
    }
    g.scratch = nullptr;
    g.scratch_bytes = 0;
  }
  int bad_rows = 0, bad_order = 0;
  std::ostringstream first;
  for (int t = 0; t < rows; ++t) {
    const std::vector<int32_t> list(got.begin() + static_cast<size_t>(t) * k,
                                    got.begin() + static_cast<size_t>(t + 1) * k);
    std::vector<int32_t> a = list;
    std::vector<int32_t> b(ref.begin() + static_cast<size_t>(t) * k, ref.begin() + static_cast<size_t>(t + 1) * k);
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    if (a != b) {
      if (bad_rows++ < 3) {
        size_t i = 0;
        while (i < a.size() && a[i] == b[i]) ++i;
        first << "  row " << t << " (valid " << valid[t] << "): sorted sets differ first at " << i << ": got "
              << a[i] << " want " << b[i] << "\n";
      }
      continue;
    }
    const int n = valid[t];
    std::vector<int32_t> want;
    if (n <= k) {
      for (int i = 0; i < k; ++i) want.push_back(i < n ? i : -1);
    } else {
      want = expected_topk_list(scores.data() + static_cast<size_t>(t) * stride, n, k, b);
    }
    if (list != want && bad_order++ < 3) {
      size_t i = 0;
      while (i < list.size() && list[i] == want[i]) ++i;
      first << "  row " << t << " (valid " << valid[t] << "): list order differs first at " << i << ": got "
            << list[i] << " want " << want[i] << "\n";
    }
  }
  EXPECT_EQ(bad_rows, 0) << label << ": " << bad_rows << " rows with a different set\n" << first.str();
  EXPECT_EQ(bad_order, 0) << label << ": " << bad_order << " rows whose list is not in the documented order\n"
                          << first.str();
}

// Row validity patterns: all, all but one, random above k, exactly k, k + 1, 1, below k, 0.
std::vector<int32_t> make_valid(int rows, int cols, int k, std::mt19937& rng) {
  std::vector<int32_t> v(rows);
  std::uniform_int_distribution<int> above(std::min(cols, k + 1), cols);
  for (int t = 0; t < rows; ++t) {
    int x = 0;
    switch (t % 8) {
      case 0: x = cols; break;
      case 1: x = cols - 1; break;
      case 2: x = above(rng); break;
      case 3: x = k; break;
      case 4: x = k + 1; break;
      case 5: x = 1; break;
      case 6: x = k / 2; break;
      case 7: x = 0; break;
    }
    v[t] = std::max(0, std::min(cols, x));
  }
  return v;
}

void run_topk_case(int rows, int cols, int pad, int k, Kind kind, std::mt19937& rng) {
  const int64_t stride = cols + pad;
  const std::vector<float> scores = make_topk_scores(rows, stride, kind, rng);
  const std::vector<int32_t> valid = make_valid(rows, cols, k, rng);
  check_topk_sets(scores, rows, stride, valid, k,
                  "topk_radix rows=" + std::to_string(rows) + " cols=" + std::to_string(cols) +
                      " k=" + std::to_string(k) + " kind=" + std::to_string(static_cast<int>(kind)));
}

TEST(CudaDsaIndexer, TopkSmallShapes) {
  REQUIRE_GPU();
  std::mt19937 rng(2001);
  run_topk_case(8, 1, 0, 1, Kind::kUniform, rng);
  run_topk_case(8, 1000, 1, 1, Kind::kUniform, rng);
  run_topk_case(8, 1000, 0, 1, Kind::kLevels4, rng);
  run_topk_case(8, 5000, 3, 256, Kind::kLevels64, rng);
  run_topk_case(8, 5000, 2, 256, Kind::kLevels4, rng);
  run_topk_case(8, 3001, 1, 2048, Kind::kSomeInf, rng);
  run_topk_case(8, 9000, 0, 2048, Kind::kUniform, rng);
  run_topk_case(8, 20000, 1, 2048, Kind::kLevels64, rng);
  run_topk_case(8, 100, 0, 2048, Kind::kUniform, rng);
  run_topk_case(8, 20000, 0, 777, Kind::kMostlyInf, rng);
}

// Multi-block (decode) path: 1..8 rows, valid anywhere in 1..cols, skewed and tied scores. Every case
// goes through check_topk_sets, which compares the multi-block lists with the single-block ones and
// the sets with the CPU.
void run_topk_valid_case(int rows, int cols, int k, Kind kind, std::mt19937& rng) {
  const int64_t stride = cols;
  const std::vector<float> scores = make_topk_scores(rows, stride, kind, rng);
  std::vector<int32_t> valid(rows);
  std::uniform_int_distribution<int> any(1, cols);
  for (int t = 0; t < rows; ++t) valid[t] = t == 0 ? cols : any(rng);
  check_topk_sets(scores, rows, stride, valid, k,
                  "topk_radix multi rows=" + std::to_string(rows) + " cols=" + std::to_string(cols) +
                      " k=" + std::to_string(k) + " kind=" + std::to_string(static_cast<int>(kind)));
}

TEST(CudaDsaIndexer, TopkMultiBlock) {
  REQUIRE_GPU();
  std::mt19937 rng(2003);
  const Kind kinds[] = {Kind::kUniform, Kind::kNarrow,   Kind::kVeryNarrow, Kind::kLevels4, Kind::kLevels64,
                        Kind::kSomeInf, Kind::kMostlyInf, Kind::kRamp,      Kind::kRampTies};
  int i = 0;
  for (Kind kind : kinds) {
    for (int rows : {1, 2, 5, 8}) {
      const int cols = (i % 4 == 0) ? 262144 : (i % 4 == 1) ? 204800 : (i % 4 == 2) ? 100003 : 12289;
      const int k = (i % 3 == 0) ? 2048 : (i % 3 == 1) ? 777 : 1;
      run_topk_valid_case(rows, cols, k, kind, rng);
      ++i;
    }
  }
  // valid <= k, exactly k, k + 1, at the single-block threshold (8192) and just above it
  for (int v : {1, 2047, 2048, 2049, 8192, 8193, 4096 * 3, 4096 * 3 + 1}) {
    const int cols = 20000, k = 2048;
    const std::vector<float> scores = make_topk_scores(3, cols, Kind::kLevels64, rng);
    const std::vector<int32_t> valid = {v, std::max(1, v - 1), std::min(cols, v + 1)};
    check_topk_sets(scores, 3, cols, valid, k, "topk_radix multi valid=" + std::to_string(v));
  }
}

// Decode timings at 204800 keys, k = 2048: the single-block path vs the multi-block path.
TEST(CudaDsaIndexer, TopkDecodeTimings) {
  REQUIRE_GPU();
  std::mt19937 rng(2004);
  const int cols = 204800, k = 2048;
  for (int rows : {1, 4, 8}) {
    const std::vector<float> scores = make_topk_scores(rows, cols, Kind::kUniform, rng);
    const std::vector<int32_t> valid(rows, cols);
    DeviceBuffer ds = DeviceBuffer::from(scores), dv = DeviceBuffer::from(valid);
    DeviceBuffer di(static_cast<size_t>(rows) * k * sizeof(int32_t));
    cuda::TopkRadixParams p;
    p.scores = ds.as<float>();
    p.scores_stride = cols;
    p.valid = dv.as<int32_t>();
    p.indices = di.as<int32_t>();
    p.tokens = rows;
    p.k = k;
    cuda::topk_radix(p);
    cuda::device_synchronize();
    const double ms_single = cuda::median_ms([&] { cuda::topk_radix(p); });
    const size_t bytes = cuda::topk_radix_scratch_bytes(p);
    ASSERT_TRUE(bytes > 0);
    DeviceBuffer dscr(bytes);
    p.scratch = dscr.data();
    p.scratch_bytes = bytes;
    cuda::topk_radix(p);
    cuda::device_synchronize();
    const double ms_multi = cuda::median_ms([&] { cuda::topk_radix(p); });
    std::printf("[cuda-ops] topk_radix decode %d rows x %d, k=%d: multi-block %.4f ms, single-block %.4f ms "
                "(scratch %.1f MiB)\n",
                rows, cols, k, ms_multi, ms_single, bytes / 1048576.0);
    // The same inputs through the full check (sets vs the CPU, lists vs the single-block path).
    check_topk_sets(scores, rows, cols, valid, k, "topk_radix decode timing rows=" + std::to_string(rows));
  }
}

TEST(CudaDsaIndexer, TopkLargeRows) {
  REQUIRE_GPU();
  std::mt19937 rng(2002);
  const int cols = 204800, k = 2048;
  for (Kind kind : {Kind::kUniform, Kind::kNarrow, Kind::kVeryNarrow, Kind::kLevels4, Kind::kLevels64,
                    Kind::kSomeInf, Kind::kMostlyInf})
    run_topk_case(8, cols, kind == Kind::kUniform ? 1 : 0, k, kind, rng);
  run_topk_case(3, 256 * 1024, 0, 1, Kind::kNarrow, rng);
}

// Long rows take the sampled single pass (valid >= 32768) with its fallbacks: the sample misleads
// (kSampleDecoy: start over), the candidates overflow the buffer (kSampleMiss, kHotWindows: a second
// pass collects), the threshold bin is too big (kAllEqual, kMostlyNan: more global passes, heavy-tie
// fallback), the whole threshold bin is needed (kExactK). Rows are fully valid (the sampled runs
// depend on valid) except in the make_valid cases. Each case also runs the multi-block path and
// compares its lists.
TEST(CudaDsaIndexer, TopkSampledPass) {
  REQUIRE_GPU();
  std::mt19937 rng(2005);
  const Kind kinds[] = {Kind::kGauss,      Kind::kUniform,    Kind::kAllEqual,  Kind::kNanMix,
                        Kind::kMostlyNan,  Kind::kAllNegInf,  Kind::kHotWindows, Kind::kExactK,
                        Kind::kSampleDecoy, Kind::kSampleMiss, Kind::kLevels64,  Kind::kRamp};
  for (Kind kind : kinds) {
    for (int k : {2048, 777, 1}) {
      if (kind == Kind::kExactK && k != 2048) continue;
      const int rows = 4, cols = 204800;
      const std::vector<float> scores = make_topk_scores(rows, cols, kind, rng);
      const std::vector<int32_t> valid(rows, cols);
      check_topk_sets(scores, rows, cols, valid, k,
                      "topk_radix sampled kind=" + std::to_string(static_cast<int>(kind)) + " k=" + std::to_string(k));
    }
  }
  // Around the sampled pass's length threshold, and rows of many validity patterns.
  for (int cols : {32767, 32768, 32769, 40000}) {
    run_topk_case(8, cols, 0, 2048, Kind::kGauss, rng);
    run_topk_case(8, cols, 1, 100, Kind::kHotWindows, rng);
  }
  run_topk_case(16, 100003, 3, 2048, Kind::kGauss, rng);
  run_topk_case(16, 204800, 0, 2048, Kind::kHotWindows, rng);
}

// Prefill-shaped timing on uniform random rows: 4096 rows x 204800 scores, k = 2048. The rows are
// windows at odd offsets of a 64 Mi-score random pool (no two rows alike, filled on the device).
TEST(CudaDsaIndexer, TopkPrefillTimings) {
  REQUIRE_GPU();
  std::mt19937 rng(2006);
  const int rows = 4096, cols = 204800, k = 2048;
  const size_t pool_n = size_t{1} << 26;
  const std::vector<float> pool = uniform(pool_n, rng);
  DeviceBuffer dpool = DeviceBuffer::from(pool);
  DeviceBuffer ds(static_cast<size_t>(rows) * cols * sizeof(float));
  std::vector<size_t> offs(rows);
  for (int t = 0; t < rows; ++t) {
    offs[t] = (static_cast<size_t>(t) * 7919 * 1021 + 13 * static_cast<size_t>(t)) % (pool_n - cols);
    ASSERT_TRUE(cudaMemcpy(ds.as<float>() + static_cast<size_t>(t) * cols, dpool.as<float>() + offs[t],
                           cols * sizeof(float), cudaMemcpyDeviceToDevice) == cudaSuccess);
  }
  const TimedTopk tk = run_timed_topk(ds.as<float>(), cols, std::vector<int32_t>(rows, cols), k);
  const std::vector<int32_t>& got = tk.lists;
  const double ms = tk.ms;
  const double gb = static_cast<double>(rows) * cols * sizeof(float) * 1e-9;
  std::printf("[cuda-ops] topk_radix %d rows x %d (uniform random), k=%d: %.3f ms (%.0f GB/s of scores read once)\n",
              rows, cols, k, ms, gb / (ms * 1e-3));
  EXPECT_TRUE(tk.stable) << "topk_radix: timed runs changed the lists";
  // Sampled rows: the set against the CPU and the documented order.
  for (int t : {0, 1, rows / 2, rows - 1}) {
    const std::vector<float> row(pool.begin() + static_cast<int64_t>(offs[t]),
                                 pool.begin() + static_cast<int64_t>(offs[t]) + cols);
    const std::vector<int32_t> ref = cpu_topk_sorted(row.data(), cols, k);
    const std::vector<int32_t> list(got.begin() + static_cast<size_t>(t) * k, got.begin() + static_cast<size_t>(t + 1) * k);
    std::vector<int32_t> sorted = list;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_TRUE(sorted == ref) << "topk_radix uniform row " << t << ": the set differs from the CPU's";
    EXPECT_TRUE(list == expected_topk_list(row.data(), cols, k, ref)) << "topk_radix uniform row " << t
                                                                     << ": the list is not in the documented order";
  }
}

// ---------------------------------------------------------------- real shapes and timings

TEST(CudaDsaIndexer, RealShapeTimings) {
  REQUIRE_GPU();
  std::printf("[cuda-ops] device: %s\n", cuda::device_description().c_str());
  std::mt19937 rng(3001);
  const int tokens = 4096, heads = 32, max_keys = 204800, k = 2048;
  // One set of inputs at the largest size; smaller key counts use a prefix of the key cache and
  // the last `tokens` positions of their own length.
  IndexerInputs in;
  in.tokens = tokens;
  in.heads = heads;
  in.keys = max_keys;
  in.dim = kDim;
  random_bf16(static_cast<size_t>(tokens) * heads * kDim, rng, &in.qb, &in.qf);
  random_bf16(static_cast<size_t>(max_keys) * kDim, rng, &in.kb, &in.kf);
  in.w = uniform(static_cast<size_t>(tokens) * heads, rng);
  in.scale = 1.0f / std::sqrt(static_cast<float>(kDim));
  DeviceBuffer dq = DeviceBuffer::from(in.qb), dk = DeviceBuffer::from(in.kb), dw = DeviceBuffer::from(in.w);
  DeviceBuffer dsc(static_cast<size_t>(tokens) * max_keys * sizeof(float));

  double ms_indexer_max = 0;
  std::vector<int32_t> pos_max;
  for (int keys : {65536, 131072, 204800}) {
    std::vector<int32_t> pos(tokens);
    for (int t = 0; t < tokens; ++t) pos[t] = keys - tokens + t;
    DeviceBuffer dpos = DeviceBuffer::from(pos);
    cuda::IndexerBf16Params p;
    p.q = dq.data();
    p.k = dk.data();
    p.w = dw.as<float>();
    p.positions = dpos.as<int32_t>();
    p.scores = dsc.as<float>();
    p.scores_stride = keys;
    p.tokens = tokens;
    p.keys = keys;
    p.heads = heads;
    p.scale = in.scale;
    double ms = 0;
    for (int variant : {1, 3, 0}) {  // the default (wgmma) last: its scores are checked and kept
      p.variant = variant;
      dsc.fill_bytes(0xFF);
      cuda::indexer_scores_bf16(p);
      cuda::device_synchronize();
      ms = cuda::median_ms([&] { cuda::indexer_scores_bf16(p); });
      const double tflop = 2.0 * heads * kDim * visible_pairs(pos, keys) * 1e-12;
      std::printf("[cuda-ops] indexer_bf16 %s T=%d S=%d H=%d D=%d (last chunk): %.3f ms, %.1f TFLOP/s (%.1f %% of %.0f)\n",
                  variant == 0 ? "wgmma" : variant == 3 ? "wgmma-2wg" : "mma.sync", tokens, keys, heads, kDim, ms,
                  tflop / (ms * 1e-3),
                  100.0 * tflop / (ms * 1e-3) / cuda_test::bf16_peak_tflops(), cuda_test::bf16_peak_tflops());
      if (variant != 0) {  // check the other kernels' rows too before they are overwritten
        IndexerInputs view = in;
        view.keys = keys;
        view.pos = pos;
        compute_indexer_bounds(&view, {tokens / 3});
        FloatCheck fc("t", "s");
        check_indexer_rows(view, tokens / 3, 1, keys, download_range(dsc, static_cast<size_t>(tokens / 3) * keys, keys),
                           &fc);
        EXPECT_TRUE(fc.bad == 0) << "indexer_bf16 variant " << variant << " real shape S=" << keys << ": " << fc.summary();
      }
    }

    // Sampled rows against the CPU: first, a middle one, last.
    IndexerInputs view = in;  // same data, this key count and positions
    view.keys = keys;
    view.pos = pos;
    compute_indexer_bounds(&view, {0, tokens / 2 + 7, tokens - 1});
    FloatCheck fc("t", "s");
    for (int t : {0, tokens / 2 + 7, tokens - 1}) {
      const std::vector<float> got = download_range(dsc, static_cast<size_t>(t) * keys, keys);
      check_indexer_rows(view, t, 1, keys, got, &fc);
    }
    EXPECT_TRUE(fc.bad == 0) << "indexer_bf16 real shape S=" << keys << ": " << fc.summary();
    if (keys == max_keys) {
      ms_indexer_max = ms;
      pos_max = pos;
    }
  }

  // Top-k of the 204800-key scores (still in dsc), valid = position + 1.
  {
    std::vector<int32_t> valid(tokens);
    for (int t = 0; t < tokens; ++t) valid[t] = std::min(max_keys, pos_max[t] + 1);
    const TimedTopk tk = run_timed_topk(dsc.as<float>(), max_keys, valid, k);
    const std::vector<int32_t>& got = tk.lists;
    const double ms = tk.ms;
    const double gb = static_cast<double>(tokens) * max_keys * sizeof(float) * 1e-9;
    std::printf("[cuda-ops] topk_radix %d rows x %d (indexer scores), k=%d: %.3f ms (%.1f %% of the indexer, %.0f GB/s "
                "of scores read once)\n",
                tokens, max_keys, k, ms, 100.0 * ms / ms_indexer_max, gb / (ms * 1e-3));
    EXPECT_TRUE(tk.stable) << "topk_radix on real indexer scores: timed runs changed the lists";
    int bad = 0, bad_order = 0;
    for (int t : {0, 1, tokens / 2, tokens - 1}) {
      const std::vector<float> row = download_range(dsc, static_cast<size_t>(t) * max_keys, max_keys);
      const int32_t v = valid[t];
      const std::vector<int32_t> ref = cpu_topk_sorted(row.data(), v, k);
      const std::vector<int32_t> list(got.begin() + static_cast<size_t>(t) * k,
                                      got.begin() + static_cast<size_t>(t + 1) * k);
      std::vector<int32_t> a = list;
      std::sort(a.begin(), a.end());
      if (a != ref) ++bad;
      else if (list != expected_topk_list(row.data(), v, k, ref)) ++bad_order;
    }
    EXPECT_EQ(bad, 0) << "topk_radix on real indexer scores: rows with a different set";
    EXPECT_EQ(bad_order, 0) << "topk_radix on real indexer scores: rows whose list is not in the documented order";
  }

  // Decode: one query at the end of a 204800-key cache.
  {
    const int keys = max_keys;
    const std::vector<int32_t> pos = {keys - 1};
    DeviceBuffer dpos = DeviceBuffer::from(pos);
    DeviceBuffer d1(static_cast<size_t>(keys) * sizeof(float));
    d1.fill_bytes(0xFF);
    cuda::IndexerBf16Params p;
    p.q = dq.data();
    p.k = dk.data();
    p.w = dw.as<float>();
    p.positions = dpos.as<int32_t>();
    p.scores = d1.as<float>();
    p.scores_stride = keys;
    p.tokens = 1;
    p.keys = keys;
    p.heads = heads;
    p.scale = in.scale;
    double ms_i = 0;
    for (int variant : {2, 0}) {  // forced wgmma, then the default (mma.sync for one query), checked below
      p.variant = variant;
      cuda::indexer_scores_bf16(p);
      cuda::device_synchronize();
      ms_i = cuda::median_ms([&] { cuda::indexer_scores_bf16(p); });
      const double gb = (static_cast<double>(keys) * kDim * 2 + static_cast<double>(keys) * 4) * 1e-9;
      std::printf("[cuda-ops] indexer_bf16 %s decode T=1 S=%d H=%d: %.4f ms, %.0f GB/s (keys read + scores written)\n",
                  variant == 2 ? "wgmma" : "default", keys, heads, ms_i, gb / (ms_i * 1e-3));
    }
    {
      IndexerInputs view = in;
      view.tokens = 1;
      view.keys = keys;
      view.pos = pos;
      compute_indexer_bounds(&view);
      FloatCheck fc("t", "s");
      check_indexer_rows(view, 0, 1, keys, d1.to_vector<float>(keys), &fc);
      EXPECT_TRUE(fc.bad == 0) << "indexer_bf16 decode: " << fc.summary();
    }

    const std::vector<int32_t> valid = {keys};
    DeviceBuffer dv = DeviceBuffer::from(valid);
    DeviceBuffer di(static_cast<size_t>(k) * sizeof(int32_t));
    di.fill_bytes(0x7F);
    cuda::TopkRadixParams tp;
    tp.scores = d1.as<float>();
    tp.scores_stride = keys;
    tp.valid = dv.as<int32_t>();
    tp.indices = di.as<int32_t>();
    tp.tokens = 1;
    tp.k = k;
    cuda::topk_radix(tp);
    cuda::device_synchronize();
    {
      const std::vector<float> row = d1.to_vector<float>(keys);
      const std::vector<int32_t> ref = cpu_topk_sorted(row.data(), valid[0], k);
      std::vector<int32_t> a = di.to_vector<int32_t>(k);
      std::sort(a.begin(), a.end());
      EXPECT_TRUE(a == ref) << "topk_radix decode: the set differs from the CPU's";
    }
    const double ms_t = cuda::median_ms([&] { cuda::topk_radix(tp); });
    std::printf("[cuda-ops] topk_radix decode 1 row x %d, k=%d: %.4f ms (%.1f %% of the decode indexer)\n", keys, k,
                ms_t, 100.0 * ms_t / ms_i);
    {  // the multi-block path on the same row: identical list, and its time
      const std::vector<int32_t> single = di.to_vector<int32_t>(k);
      const size_t bytes = cuda::topk_radix_scratch_bytes(tp);
      ASSERT_TRUE(bytes > 0);
      DeviceBuffer dscr(bytes);
      dscr.fill_bytes(0x7F);
      di.fill_bytes(0x7F);
      tp.scratch = dscr.data();
      tp.scratch_bytes = bytes;
      cuda::topk_radix(tp);
      cuda::device_synchronize();
      EXPECT_TRUE(di.to_vector<int32_t>(k) == single) << "topk_radix decode: multi-block list differs";
      const double ms_m = cuda::median_ms([&] { cuda::topk_radix(tp); });
      std::printf("[cuda-ops] topk_radix decode multi-block 1 row x %d, k=%d: %.4f ms (%.1f %% of the decode "
                  "indexer)\n",
                  keys, k, ms_m, 100.0 * ms_m / ms_i);
    }
  }
}

}  // namespace
}  // namespace indexcache
