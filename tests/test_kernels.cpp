// CPU backend kernels against plain references written here (double accumulation), on random
// inputs drawn fresh from fixed seeds. Outputs are poisoned (NaN, or an impossible index) before
// each call so unwritten elements show; NaN never passes. Tolerances are derived per element from
// the magnitude of the terms that make it up (see sum_tol).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "backend/cpu/kernels.h"
#include "backend/cpu/simd_dispatch.h"

namespace indexcache {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr double kEps = std::numeric_limits<float>::epsilon();
// Safety factor over the error estimates below; a missing term or a wrong index is orders of
// magnitude larger than this.
constexpr double kSafety = 8.0;
constexpr int32_t kPoisonIndex = -7;  // never a valid top-k output (those are >= -1)

// Error allowed for an f32 sum of n terms whose absolute values sum to sum_abs: the probabilistic
// rounding bound eps * sqrt(n) * sum|terms|, times kSafety.
double sum_tol(double n, double sum_abs) { return kSafety * kEps * std::sqrt(std::max(n, 1.0)) * sum_abs; }

std::vector<float> uniform(size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// The CPU reference kernels under test, called directly (the Backend ops wrap them with views;
// tests/test_backend_ops.cpp covers that layer).
struct CpuKernels {
  void linear(const LinearParams& p) { cpu::linear(p); }
  void norm(const NormParams& p) { cpu::norm(p); }
  void rope(const RopeParams& p) { cpu::rope(p); }
  void indexer_scores(const IndexerScoreParams& p) { cpu::indexer_scores(p); }
  void topk(const TopkParams& p) { cpu::topk(p); }
  void sparse_attention(const SparseAttentionParams& p) { cpu::sparse_attention(p); }
  void silu_mul(const float* gate, const float* up, float* y, int64_t n) { cpu::silu_mul(gate, up, y, n); }
};
CpuKernels& cpu() {
  static CpuKernels k;
  return k;
}

// Collects element mismatches and reports the first few with their coordinates.
class Mismatches {
 public:
  // got must be within tol of ref; infinities must match exactly; NaN never passes.
  void check(float got, double ref, double tol, int64_t a, int64_t b = -1, int64_t c = -1) {
    ++checked_;
    bool ok;
    if (std::isinf(ref)) {
      ok = static_cast<double>(got) == ref;
    } else {
      const double err = std::fabs(static_cast<double>(got) - ref);
      ok = !std::isnan(got) && err <= tol;
      if (ok && tol > 0) worst_ = std::max(worst_, err / tol);
    }
    if (!ok) fail(a, b, c, "got " + fmt(got) + ", want " + fmt(ref) + " +- " + fmt(tol));
  }
  void check_eq(int64_t got, int64_t want, int64_t a, int64_t b = -1, int64_t c = -1) {
    ++checked_;
    if (got != want) fail(a, b, c, "got " + std::to_string(got) + ", want " + std::to_string(want));
  }
  void check_finite(float got, int64_t a, int64_t b = -1, int64_t c = -1) {
    ++checked_;
    if (!std::isfinite(got)) fail(a, b, c, "not finite: " + fmt(got));
  }
  void check_untouched_nan(float got, int64_t a, int64_t b = -1, int64_t c = -1) {
    ++checked_;
    if (!std::isnan(got)) fail(a, b, c, "padding written: " + fmt(got));
  }
  int count() const { return count_; }
  int64_t checked() const { return checked_; }
  double worst_ratio() const { return worst_; }
  std::string report() const {
    return std::to_string(count_) + " of " + std::to_string(checked_) + " elements wrong; first:\n" + first_;
  }

 private:
  static std::string fmt(double v) {
    std::ostringstream s;
    s.precision(9);
    s << v;
    return s.str();
  }
  void fail(int64_t a, int64_t b, int64_t c, const std::string& what) {
    if (count_++ < 8) {
      first_ += "  [" + std::to_string(a);
      if (b >= 0) first_ += "," + std::to_string(b);
      if (c >= 0) first_ += "," + std::to_string(c);
      first_ += "] " + what + "\n";
    }
  }
  int count_ = 0;
  int64_t checked_ = 0;
  double worst_ = 0;
  std::string first_;
};

#define EXPECT_NO_MISMATCH(m) \
  EXPECT_EQ((m).count(), 0) << (m).report(); \
  EXPECT_GT((m).checked(), 0)

// ------------------------------------------------------------------------------------------------
// indexer_scores

enum class Positions { kPrefill, kOffset100, kRandom, kDecodeLast, kPastLastKey };

struct IndexerCase {
  const char* name;
  int tokens, keys, heads, dim;
  Positions positions;
};

void run_indexer_case(const IndexerCase& c, int stride_pad, uint32_t seed) {
  SCOPED_TRACE(std::string(c.name) + " stride_pad=" + std::to_string(stride_pad));
  std::mt19937 rng(seed);
  const int T = c.tokens, S = c.keys, H = c.heads, D = c.dim;
  const std::vector<float> q = uniform(size_t(T) * H * D, rng);
  const std::vector<float> w = uniform(size_t(T) * H, rng);
  const std::vector<float> k = uniform(size_t(S) * D, rng);
  std::vector<int32_t> pos(T);
  std::uniform_int_distribution<int> any_key(0, S - 1);
  for (int t = 0; t < T; ++t) {
    switch (c.positions) {
      case Positions::kPrefill: pos[t] = t; break;
      case Positions::kOffset100: pos[t] = 100 + t; break;
      case Positions::kRandom: pos[t] = any_key(rng); break;
      case Positions::kDecodeLast: pos[t] = S - T + t; break;
      case Positions::kPastLastKey: pos[t] = S - 2 + 3 * t; break;
    }
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const int64_t stride = S + stride_pad;
  std::vector<float> scores(size_t(T) * stride, kNaN);

  cpu().indexer_scores({.q = q.data(), .w = w.data(), .k = k.data(), .positions = pos.data(),
                        .scores = scores.data(), .scores_stride = stride, .tokens = T, .keys = S,
                        .heads = H, .head_dim = D, .scale = scale});

  Mismatches m;
  for (int t = 0; t < T; ++t) {
    for (int s = 0; s < S; ++s) {
      const float got = scores[size_t(t) * stride + s];
      if (s > pos[t]) {
        m.check(got, -kInf, 0, t, s);
        continue;
      }
      double total = 0, total_abs = 0;
      for (int h = 0; h < H; ++h) {
        double dot = 0, dot_abs = 0;
        for (int d = 0; d < D; ++d) {
          const double term = double(q[(size_t(t) * H + h) * D + d]) * k[size_t(s) * D + d];
          dot += term;
          dot_abs += std::fabs(term);
        }
        const double wh = w[size_t(t) * H + h];
        total += wh * std::max(dot, 0.0);
        total_abs += std::fabs(wh) * dot_abs;
      }
      m.check(got, total * scale, sum_tol(double(H) * D + H, total_abs * scale), t, s);
    }
    for (int s = S; s < stride; ++s) m.check_untouched_nan(scores[size_t(t) * stride + s], t, s);
  }
  EXPECT_NO_MISMATCH(m);
}

TEST(IndexerScores, MatchesNaiveReference) {
  const IndexerCase cases[] = {
      {"one_query_one_key", 1, 1, 1, 8, Positions::kPrefill},
      {"prefill_7_h4_d32", 7, 7, 4, 32, Positions::kPrefill},
      {"prefill_33_h5_d8", 33, 33, 5, 8, Positions::kPrefill},
      {"prefill_33_h3_d128", 33, 33, 3, 128, Positions::kPrefill},
      {"offset100_t1_h32_d128", 1, 101, 32, 128, Positions::kOffset100},
      {"offset100_t7_h3_d32", 7, 107, 3, 32, Positions::kOffset100},
      {"offset100_t33_h32_d128", 33, 133, 32, 128, Positions::kOffset100},
      {"offset100_t33_h6_d8", 33, 133, 6, 8, Positions::kOffset100},
      {"random_positions_keys37_h7_d32", 33, 37, 7, 32, Positions::kRandom},
      {"random_positions_keys250_h2_d128", 7, 250, 2, 128, Positions::kRandom},
      {"decode_keys999_h32_d128", 1, 999, 32, 128, Positions::kDecodeLast},
      {"last7_of_keys300_h9_d32", 7, 300, 9, 32, Positions::kDecodeLast},
      {"positions_past_last_key_h4_d8", 7, 21, 4, 8, Positions::kPastLastKey},
  };
  uint32_t seed = 1000;
  for (const IndexerCase& c : cases) {
    for (int pad : {0, 13}) run_indexer_case(c, pad, seed++);
  }
}

TEST(IndexerScores, NoTokensWritesNothing) {
  std::vector<float> q(8, 1.0f), w(1, 1.0f), k(8, 1.0f), scores(4, kNaN);
  std::vector<int32_t> pos(1, 0);
  cpu().indexer_scores({.q = q.data(), .w = w.data(), .k = k.data(), .positions = pos.data(),
                        .scores = scores.data(), .scores_stride = 4, .tokens = 0, .keys = 1,
                        .heads = 1, .head_dim = 8});
  for (float v : scores) EXPECT_TRUE(std::isnan(v));
}

// ------------------------------------------------------------------------------------------------
// topk

// Rank order of the contract: higher score first, NaN below everything (-inf included), ties to the
// lower index.
bool ranks_before(const float* row, int32_t i, int32_t j) {
  const bool ni = std::isnan(row[i]), nj = std::isnan(row[j]);
  if (ni != nj) return nj;
  if (!ni && row[i] != row[j]) return row[i] > row[j];
  return i < j;
}

std::vector<int32_t> reference_topk(const float* row, int valid, int k) {
  std::vector<int32_t> out(k, -1);
  if (valid < k) {
    std::iota(out.begin(), out.begin() + valid, 0);
    return out;
  }
  std::vector<int32_t> idx(valid);
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return ranks_before(row, a, b); });
  std::copy_n(idx.begin(), k, out.begin());
  return out;
}

enum class Fill { kUniform, kFewLevels, kNanAndInf };

// Runs top-k over rows of `valid` candidates; the stride padding past each row's valid holds +inf,
// which a kernel reading past `valid` would pick first.
void run_topk_case(const char* name, const std::vector<int32_t>& valid, int k, Fill fill, uint32_t seed) {
  SCOPED_TRACE(std::string(name) + " k=" + std::to_string(k));
  std::mt19937 rng(seed);
  const int T = static_cast<int>(valid.size());
  const int64_t stride = *std::max_element(valid.begin(), valid.end()) + 3;
  std::vector<float> scores(size_t(T) * stride, kInf);
  std::uniform_real_distribution<float> u(-5.0f, 5.0f);
  std::uniform_int_distribution<int> level(0, 3);
  std::uniform_int_distribution<int> special(0, 9);
  for (int t = 0; t < T; ++t) {
    for (int i = 0; i < valid[t]; ++i) {
      float v = fill == Fill::kFewLevels ? static_cast<float>(level(rng)) : u(rng);
      if (fill == Fill::kNanAndInf) {
        const int r = special(rng);
        if (r == 0) v = kNaN;
        if (r == 1) v = -kInf;
        if (r == 2) v = -v;  // sign flips only
      }
      scores[size_t(t) * stride + i] = v;
    }
  }
  std::vector<int32_t> indices(size_t(T) * k, kPoisonIndex);

  cpu().topk({.scores = scores.data(), .scores_stride = stride, .valid = valid.data(),
              .indices = indices.data(), .tokens = T, .k = k});

  Mismatches m;
  for (int t = 0; t < T; ++t) {
    const std::vector<int32_t> want = reference_topk(scores.data() + size_t(t) * stride, valid[t], k);
    for (int i = 0; i < k; ++i) m.check_eq(indices[size_t(t) * k + i], want[i], t, i);
  }
  EXPECT_NO_MISMATCH(m);
}

TEST(Topk, MatchesSortReference) {
  // Rows with valid > k (the selection proper); k not a multiple of anything.
  run_topk_case("uniform", {100, 17, 1000, 37, 64, 65}, 1, Fill::kUniform, 1);
  run_topk_case("uniform", {100, 17, 1000, 37, 64, 65, 9, 33}, 8, Fill::kUniform, 2);
  run_topk_case("uniform", {1000, 513, 777}, 100, Fill::kUniform, 3);
  run_topk_case("uniform_many_rows", std::vector<int32_t>(33, 200), 13, Fill::kUniform, 4);
}

TEST(Topk, ExactTiesGoToLowerIndex) {
  run_topk_case("few_levels", {100, 17, 1000, 37, 64, 65}, 8, Fill::kFewLevels, 10);
  run_topk_case("few_levels", {100, 1000}, 1, Fill::kFewLevels, 11);
  run_topk_case("few_levels", {1000, 600}, 300, Fill::kFewLevels, 12);
}

TEST(Topk, NanRanksLowestAndMinusInfAboveIt) {
  run_topk_case("nan_inf", {100, 17, 1000, 37, 64, 65}, 8, Fill::kNanAndInf, 20);
  // k large enough that the selection reaches into the -inf and NaN entries.
  run_topk_case("nan_inf_deep", {50, 40, 30}, 29, Fill::kNanAndInf, 21);
  // Rows made only of NaN and -inf.
  std::vector<float> scores = {kNaN, -kInf, kNaN, -kInf, kNaN, kNaN, kNaN, kNaN};
  const std::vector<int32_t> valid = {4, 4};
  std::vector<int32_t> idx(6, kPoisonIndex);
  cpu().topk({.scores = scores.data(), .scores_stride = 4, .valid = valid.data(), .indices = idx.data(),
              .tokens = 2, .k = 3});
  EXPECT_EQ(idx, (std::vector<int32_t>{1, 3, 0, 0, 1, 2}));
}

TEST(Topk, RowsShorterThanKArePaddedWithMinusOne) {
  // valid < k: 0..valid-1 then -1 (valid 0 included).
  run_topk_case("short_rows", {0, 1, 5, 7}, 8, Fill::kUniform, 30);
  run_topk_case("short_rows_mixed", {3, 100, 0, 2047, 5000}, 2048, Fill::kUniform, 31);
}

// The contract (backend.h) asks for descending score order whenever valid >= k; only rows with
// valid < k are in index order.
TEST(Topk, ValidEqualToKIsInScoreOrder) {
  run_topk_case("valid_eq_k", {1, 8}, 1, Fill::kUniform, 40);
  run_topk_case("valid_eq_k", {8, 8, 8}, 8, Fill::kUniform, 41);
  run_topk_case("valid_eq_k", {2048}, 2048, Fill::kUniform, 42);
}

TEST(Topk, LargeRowsK2048) {
  run_topk_case("16k", {16384, 16384, 9000, 2049, 16000}, 2048, Fill::kUniform, 50);
  run_topk_case("16k_ties", {16384, 12000}, 2048, Fill::kFewLevels, 51);
  run_topk_case("16k_nan_inf", {16384}, 2048, Fill::kNanAndInf, 52);
}

// Randomized: thousands of rows against a stable sort of the contract's rank order. The kernel ranks
// by an order-preserving integer key of the float, so -0 ranks just below +0 (they are not a tie);
// the reference says so explicitly. Rows mix quantised scores (many exact ties), -inf, NaN, signed
// zeros, subnormals and wide magnitudes; valid covers 0, 1, k - 1, k, k + 1 and random lengths, k
// covers 1 and both sides of the kernel's small-k sort cut-over.
TEST(Topk, RandomizedAgainstStableSort) {
  std::mt19937 rng(60);
  const auto greater_rank = [](float a, float b) {  // a ranks strictly before b, ignoring index
    const bool na = std::isnan(a), nb = std::isnan(b);
    if (na || nb) return !na && nb;
    if (a != b) return a > b;
    return a == 0.0f && !std::signbit(a) && std::signbit(b);
  };
  const int ks[] = {1, 2, 3, 5, 16, 63, 64, 65, 100, 256, 257, 700, 2048};
  std::uniform_int_distribution<int> pick_k(0, static_cast<int>(std::size(ks)) - 1);
  std::uniform_int_distribution<int> pick_fill(0, 7);
  int64_t rows_checked = 0;
  for (int round = 0; round < 400; ++round) {
    const int k = ks[pick_k(rng)];
    const int T = std::uniform_int_distribution<int>(1, 12)(rng);
    std::vector<int32_t> valid(T);
    for (int32_t& v : valid) {
      switch (std::uniform_int_distribution<int>(0, 6)(rng)) {
        case 0: v = std::uniform_int_distribution<int>(0, k)(rng); break;
        case 1: v = std::max(k - 1, 0); break;
        case 2: v = k; break;
        case 3: v = k + 1; break;
        default: v = std::uniform_int_distribution<int>(k, std::max(3 * k, 3000))(rng); break;
      }
    }
    const int64_t stride = *std::max_element(valid.begin(), valid.end()) + 5;
    std::vector<float> scores(size_t(T) * stride, kInf);  // padding a kernel must not read
    for (int t = 0; t < T; ++t) {
      const int fill = pick_fill(rng);
      const int levels = std::uniform_int_distribution<int>(1, 6)(rng);
      std::uniform_int_distribution<int> level(0, levels - 1);
      std::uniform_real_distribution<float> u(-4.0f, 4.0f);
      std::uniform_int_distribution<int> special(0, 15);
      float* row = scores.data() + size_t(t) * stride;
      for (int i = 0; i < valid[t]; ++i) {
        float v = 0.0f;
        switch (fill) {
          case 0: v = u(rng); break;                                           // distinct
          case 1: v = static_cast<float>(level(rng)) * 0.25f - 0.5f; break;    // few levels
          case 2: v = std::round(u(rng) * 8.0f) / 8.0f; break;                 // quantised
          case 3: v = level(rng) == 0 ? -kInf : u(rng); break;                 // -inf heavy
          case 4: v = std::ldexp(u(rng), std::uniform_int_distribution<int>(-140, 100)(rng)); break;
          case 5: v = 1.5f; break;                                             // all equal
          case 6: v = -kInf; break;                                            // all -inf
          default: v = static_cast<float>(level(rng)) - 1.0f; break;           // ties at +-0
        }
        const int r = special(rng);
        if (fill >= 5 && r < 3) v = r == 0 ? kNaN : (r == 1 ? -0.0f : 0.0f);
        if (fill < 5 && r == 0) v = kNaN;
        if (fill < 5 && r == 1) v = -kInf;
        if (r == 2 && v == 0.0f) v = -v;  // flips the zero's sign
        row[i] = v;
      }
    }
    std::vector<int32_t> indices(size_t(T) * k, kPoisonIndex);
    cpu().topk({.scores = scores.data(), .scores_stride = stride, .valid = valid.data(),
                .indices = indices.data(), .tokens = T, .k = k});

    SCOPED_TRACE("round " + std::to_string(round) + " k=" + std::to_string(k));
    Mismatches m;
    for (int t = 0; t < T; ++t) {
      const float* row = scores.data() + size_t(t) * stride;
      std::vector<int32_t> want(k, -1);
      if (valid[t] < k) {
        std::iota(want.begin(), want.begin() + valid[t], 0);
      } else {
        std::vector<int32_t> idx(valid[t]);
        std::iota(idx.begin(), idx.end(), 0);
        std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return greater_rank(row[a], row[b]); });
        std::copy_n(idx.begin(), k, want.begin());
      }
      for (int i = 0; i < k; ++i) m.check_eq(indices[size_t(t) * k + i], want[i], t, i);
      ++rows_checked;
    }
    EXPECT_NO_MISMATCH(m);
    if (m.count() > 0) break;
  }
  EXPECT_GT(rows_checked, 2000);
}

// ------------------------------------------------------------------------------------------------
// sparse_attention

struct AttentionCase {
  const char* name;
  int tokens, heads, kv_heads, dk, dv, keys, selected;
  int pad;             // extra elements added to every head and token stride (0: packed)
  double skip_frac;    // fraction of index entries replaced by -1
  bool v_aliases_k;    // absorbed MLA: V is the first dv dims of the latent K
};

void run_attention_case(const AttentionCase& c, uint32_t seed) {
  SCOPED_TRACE(c.name);
  std::mt19937 rng(seed);
  const int T = c.tokens, H = c.heads, Hkv = c.kv_heads, Dk = c.dk, Dv = c.dv, S = c.keys;
  const int n = c.selected;
  const int64_t q_hs = Dk + c.pad, q_ts = H * q_hs + 2 * c.pad;
  const int64_t k_hs = Dk + c.pad, k_ts = Hkv * k_hs + 3 * c.pad;
  const int64_t v_hs = c.v_aliases_k ? k_hs : Dv + c.pad;
  const int64_t v_ts = c.v_aliases_k ? k_ts : Hkv * v_hs + c.pad;
  const int64_t o_hs = Dv + c.pad, o_ts = H * o_hs + 5 * c.pad;

  const std::vector<float> q = uniform(size_t(T) * q_ts, rng);
  const std::vector<float> k = uniform(size_t(S) * k_ts, rng);
  const std::vector<float> v_own = c.v_aliases_k ? std::vector<float>() : uniform(size_t(S) * v_ts, rng);
  const float* v = c.v_aliases_k ? k.data() : v_own.data();

  // Distinct selected tokens per query, in random order, some entries -1.
  std::vector<int32_t> sel(size_t(T) * n);
  std::vector<int32_t> perm(S);
  std::bernoulli_distribution skip(c.skip_frac);
  for (int t = 0; t < T; ++t) {
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int i = 0; i < n; ++i) sel[size_t(t) * n + i] = skip(rng) ? -1 : perm[i];
  }
  // Softmax logits of order one.
  const float scale = 3.0f / std::sqrt(static_cast<float>(Dk));
  std::vector<float> out(size_t(T) * o_ts, kNaN);

  cpu().sparse_attention({.q = q.data(), .q_token_stride = q_ts, .q_head_stride = q_hs,
                          .k = k.data(), .k_token_stride = k_ts, .k_head_stride = k_hs,
                          .v = v, .v_token_stride = v_ts, .v_head_stride = v_hs,
                          .indices = sel.data(), .num_selected = n, .out = out.data(),
                          .out_token_stride = o_ts, .out_head_stride = o_hs, .tokens = T, .heads = H,
                          .kv_heads = Hkv, .head_dim_k = Dk, .head_dim_v = Dv, .scale = scale});

  Mismatches m;
  std::vector<double> logit(n), dot_abs(n);
  std::vector<char> written(out.size(), 0);
  for (int t = 0; t < T; ++t) {
    for (int h = 0; h < H; ++h) {
      const int kvh = Hkv == 1 ? 0 : h;
      const float* qh = q.data() + t * q_ts + h * q_hs;
      double mx = -INFINITY, max_dot_abs = 0;
      int live = 0;
      for (int i = 0; i < n; ++i) {
        const int32_t j = sel[size_t(t) * n + i];
        if (j < 0) continue;
        ++live;
        const float* kj = k.data() + j * k_ts + kvh * k_hs;
        double dot = 0, a = 0;
        for (int d = 0; d < Dk; ++d) {
          dot += double(qh[d]) * kj[d];
          a += std::fabs(double(qh[d]) * kj[d]);
        }
        logit[i] = dot * scale;
        max_dot_abs = std::max(max_dot_abs, a * scale);
        mx = std::max(mx, logit[i]);
      }
      // Error model: each logit is off by at most dl (an f32 dot of Dk terms); that perturbs each
      // softmax weight by a relative ~2*dl, plus rounding in exp, the denominator and the weighted
      // sum (~eps * sqrt(live) each), all relative to sum_j p_j |v_jd|.
      const double dl = sum_tol(Dk, max_dot_abs);
      const double rel = 2.0 * dl + sum_tol(live, 1.0) + kSafety * 4.0 * kEps;
      double denom = 0;
      for (int i = 0; i < n; ++i)
        if (sel[size_t(t) * n + i] >= 0) denom += std::exp(logit[i] - mx);
      float* oh = out.data() + t * o_ts + h * o_hs;
      for (int d = 0; d < Dv; ++d) {
        double acc = 0, acc_abs = 0;
        for (int i = 0; i < n; ++i) {
          const int32_t j = sel[size_t(t) * n + i];
          if (j < 0) continue;
          const double p = std::exp(logit[i] - mx) / denom;
          const double vj = v[j * v_ts + kvh * v_hs + d];
          acc += p * vj;
          acc_abs += p * std::fabs(vj);
        }
        written[oh + d - out.data()] = 1;
        if (live == 0) {
          // Nothing selected: the contract does not fix a value, but it must be written.
          m.check_finite(oh[d], t, h, d);
        } else {
          m.check(oh[d], acc, rel * acc_abs, t, h, d);
        }
      }
    }
  }
  for (size_t i = 0; i < out.size(); ++i)
    if (!written[i]) m.check_untouched_nan(out[i], static_cast<int64_t>(i));
  EXPECT_NO_MISMATCH(m);
}

TEST(SparseAttention, ExpandedHeadsMatchNaiveSoftmax) {
  const AttentionCase cases[] = {
      {"one_token_one_head_d8", 1, 1, 1, 8, 8, 1, 1, 0, 0.0, false},
      {"expanded_h3_d32", 7, 3, 3, 32, 32, 50, 17, 0, 0.2, false},
      {"expanded_h5_dk40_dv24_strided", 7, 5, 5, 40, 24, 100, 33, 7, 0.1, false},
      {"expanded_h4_d128_strided", 33, 4, 4, 128, 128, 300, 64, 3, 0.05, false},
      {"expanded_h2_dk192_dv128", 7, 2, 2, 192, 128, 400, 256, 1, 0.0, false},
  };
  uint32_t seed = 2000;
  for (const AttentionCase& c : cases) run_attention_case(c, seed++);
}

TEST(SparseAttention, AbsorbedMqaMatchesNaiveSoftmax) {
  const AttentionCase cases[] = {
      {"mqa_h5_dk72_dv64", 7, 5, 1, 72, 64, 200, 33, 0, 0.1, false},
      {"mqa_h16_dk576_dv512", 3, 16, 1, 576, 512, 600, 128, 0, 0.05, false},
      {"mqa_h3_dk576_dv512_strided", 2, 3, 1, 576, 512, 300, 200, 9, 0.3, false},
      {"mqa_v_aliases_latent_k", 7, 4, 1, 576, 512, 300, 64, 0, 0.1, true},
      {"mqa_v_aliases_latent_k_strided", 3, 6, 1, 72, 64, 90, 40, 5, 0.0, true},
  };
  uint32_t seed = 3000;
  for (const AttentionCase& c : cases) run_attention_case(c, seed++);
}

TEST(SparseAttention, AllEntriesSkippedStillWritesFiniteOutput) {
  const AttentionCase c = {"all_skipped", 3, 2, 1, 16, 8, 20, 5, 2, 1.0, false};
  run_attention_case(c, 4000);
}

// ------------------------------------------------------------------------------------------------
// rope

TEST(Rope, HandComputedInterleavedAndHalfSplit) {
  // Position 1: cos = {0, 0.6}, sin = {1, 0.8} (row 0 is the identity and must not be used).
  const std::vector<float> cos_t = {1, 1, 0.0f, 0.6f};
  const std::vector<float> sin_t = {0, 0, 1.0f, 0.8f};
  const int32_t pos = 1;
  // Two heads of 6 dims; rope on dims 1..4; dims 0 and 5 untouched.
  const std::vector<float> x0 = {9, 1, 2, 3, 4, 7, -9, 1, 2, 3, 4, -7};
  struct Want {
    RopeLayout layout;
    std::vector<float> head;
  };
  // Interleaved pairs (1,2),(3,4): (1,2) by 90 degrees -> (-2,1); (3,4) by (0.6,0.8) -> (-1.4,4.8).
  // Half-split pairs (1,3),(2,4): (1,3) -> (-3,1); (2,4) -> (-2,4).
  const Want wants[] = {{RopeLayout::kInterleaved, {-2, 1, -1.4f, 4.8f}},
                        {RopeLayout::kHalfSplit, {-3, -2, 1, 4}}};
  for (const Want& want : wants) {
    std::vector<float> x = x0;
    cpu().rope({.x = x.data(), .token_stride = 12, .head_stride = 6, .tokens = 1, .heads = 2, .offset = 1,
                .rope_dim = 4, .cos = cos_t.data(), .sin = sin_t.data(), .positions = &pos,
                .layout = want.layout});
    for (int h = 0; h < 2; ++h) {
      EXPECT_EQ(x[h * 6], x0[h * 6]);
      EXPECT_EQ(x[h * 6 + 5], x0[h * 6 + 5]);
      for (int i = 0; i < 4; ++i) EXPECT_NEAR(x[h * 6 + 1 + i], want.head[i], 1e-6) << "head " << h << " dim " << i;
    }
  }
}

struct RopeCase {
  const char* name;
  int tokens, heads, head_dim, offset, rope_dim;
  int64_t head_stride, token_stride;  // 0 head_stride only with heads == 1
  RopeLayout layout;
};

void run_rope_case(const RopeCase& c, uint32_t seed) {
  SCOPED_TRACE(c.name);
  std::mt19937 rng(seed);
  const int half = c.rope_dim / 2, max_pos = 5000;
  std::vector<float> cos_t(size_t(max_pos) * half), sin_t(size_t(max_pos) * half);
  for (int p = 0; p < max_pos; ++p) {
    for (int i = 0; i < half; ++i) {
      const double angle = p * std::pow(10000.0, -2.0 * i / c.rope_dim);
      cos_t[size_t(p) * half + i] = static_cast<float>(std::cos(angle));
      sin_t[size_t(p) * half + i] = static_cast<float>(std::sin(angle));
    }
  }
  std::vector<int32_t> pos(c.tokens);
  std::uniform_int_distribution<int> any(0, max_pos - 1);
  for (int32_t& p : pos) p = any(rng);
  const std::vector<float> x0 = uniform(size_t(c.tokens) * c.token_stride, rng);
  std::vector<float> x = x0;

  cpu().rope({.x = x.data(), .token_stride = c.token_stride, .head_stride = c.head_stride, .tokens = c.tokens,
              .heads = c.heads, .offset = c.offset, .rope_dim = c.rope_dim, .cos = cos_t.data(),
              .sin = sin_t.data(), .positions = pos.data(), .layout = c.layout});

  std::vector<double> want(x0.begin(), x0.end()), tol(x0.size(), 0.0);
  const bool inter = c.layout == RopeLayout::kInterleaved;
  for (int t = 0; t < c.tokens; ++t) {
    for (int h = 0; h < c.heads; ++h) {
      const size_t base = t * c.token_stride + h * c.head_stride + c.offset;
      for (int i = 0; i < half; ++i) {
        const size_t a = base + (inter ? 2 * i : i), b = base + (inter ? 2 * i + 1 : i + half);
        const double cs = cos_t[size_t(pos[t]) * half + i], sn = sin_t[size_t(pos[t]) * half + i];
        want[a] = x0[a] * cs - x0[b] * sn;
        want[b] = x0[b] * cs + x0[a] * sn;
        tol[a] = tol[b] = sum_tol(2, std::fabs(x0[a]) + std::fabs(x0[b]));
      }
    }
  }
  Mismatches m;
  for (size_t i = 0; i < x.size(); ++i) m.check(x[i], want[i], tol[i], static_cast<int64_t>(i));
  EXPECT_NO_MISMATCH(m);
}

TEST(Rope, RandomMatchesNaive) {
  const RopeCase cases[] = {
      // Indexer keys: one head, the rope dims first (GLM interleaved / DeepSeek half-split).
      {"indexer_key_interleaved", 7, 1, 128, 0, 64, 128, 128, RopeLayout::kInterleaved},
      {"indexer_key_halfsplit", 33, 1, 128, 0, 64, 128, 128, RopeLayout::kHalfSplit},
      // MLA query heads: rope on the last dims of each head, heads not a multiple of 4.
      {"mla_q_tail_interleaved", 33, 5, 40, 32, 8, 40, 200, RopeLayout::kInterleaved},
      {"mla_q_tail_halfsplit", 7, 3, 40, 24, 16, 40, 120, RopeLayout::kHalfSplit},
      // Strided heads and tokens (padding must stay untouched).
      {"strided_interleaved", 7, 3, 32, 8, 16, 37, 3 * 37 + 5, RopeLayout::kInterleaved},
      {"strided_halfsplit", 33, 6, 32, 4, 16, 35, 6 * 35 + 1, RopeLayout::kHalfSplit},
      // Shared k_pe: head_stride 0 with one head, rope at the end of the latent row.
      {"kpe_head_stride0", 33, 1, 72, 64, 8, 0, 72, RopeLayout::kInterleaved},
      {"single_token_d8", 1, 1, 8, 0, 8, 0, 8, RopeLayout::kHalfSplit},
  };
  uint32_t seed = 5000;
  for (const RopeCase& c : cases) run_rope_case(c, seed++);
}

// ------------------------------------------------------------------------------------------------
// norm

void run_norm_case(const char* name, int tokens, int dim, bool layer_norm, bool in_place, int pad,
                   float eps, uint32_t seed) {
  SCOPED_TRACE(std::string(name) + " tokens=" + std::to_string(tokens) + " dim=" + std::to_string(dim));
  std::mt19937 rng(seed);
  const int64_t xs = dim + pad, ys = in_place ? xs : dim + 2 * pad + 1;
  // Non-zero mean so LayerNorm's centring matters.
  const std::vector<float> x0 = uniform(size_t(tokens) * xs, rng, -1.0f, 2.0f);
  const std::vector<float> w = uniform(dim, rng, 0.5f, 1.5f);
  const std::vector<float> b = uniform(dim, rng);
  std::vector<float> x = x0;
  std::vector<float> y_own(in_place ? 0 : size_t(tokens) * ys, kNaN);
  float* y = in_place ? x.data() : y_own.data();

  cpu().norm({.x = x.data(), .x_stride = xs, .w = w.data(), .bias = layer_norm ? b.data() : nullptr,
              .y = y, .y_stride = ys, .tokens = tokens, .dim = dim, .eps = eps, .layer_norm = layer_norm});

  Mismatches m;
  for (int t = 0; t < tokens; ++t) {
    const float* xt = x0.data() + t * xs;
    double mean = 0, var = 0, abs_mean = 0;
    if (layer_norm) {
      for (int i = 0; i < dim; ++i) mean += xt[i];
      mean /= dim;
      abs_mean = std::fabs(mean);
    }
    for (int i = 0; i < dim; ++i) var += (xt[i] - mean) * (xt[i] - mean);
    var /= dim;
    const double inv = 1.0 / std::sqrt(var + eps);
    for (int i = 0; i < dim; ++i) {
      const double bias = layer_norm ? b[i] : 0.0;
      const double want = (xt[i] - mean) * inv * w[i] + bias;
      // Centring in f32 costs eps * (|x| + |mean|); scaling a few roundings more.
      const double tol = sum_tol(4, (std::fabs(xt[i]) + abs_mean) * inv * w[i] + std::fabs(bias));
      m.check(y[t * ys + i], want, tol, t, i);
    }
    for (int i = dim; i < ys; ++i) {
      if (in_place)
        m.check(y[t * ys + i], xt[i], 0, t, i);  // x's own padding stays as it was
      else
        m.check_untouched_nan(y[t * ys + i], t, i);
    }
  }
  EXPECT_NO_MISMATCH(m);
}

TEST(Norm, RmsNormMatchesNaive) {
  uint32_t seed = 6000;
  for (int tokens : {1, 7, 33})
    for (int dim : {8, 33, 128, 1000}) {
      run_norm_case("rms", tokens, dim, false, false, 0, 1e-6f, seed++);
      run_norm_case("rms_strided", tokens, dim, false, false, 5, 1e-5f, seed++);
      run_norm_case("rms_in_place_strided", tokens, dim, false, true, 3, 1e-6f, seed++);
    }
}

TEST(Norm, LayerNormWithBiasMatchesNaive) {
  uint32_t seed = 7000;
  for (int tokens : {1, 7, 33})
    for (int dim : {8, 33, 128, 1000}) {
      run_norm_case("layer", tokens, dim, true, false, 0, 1e-6f, seed++);
      run_norm_case("layer_strided", tokens, dim, true, false, 5, 1e-5f, seed++);
      run_norm_case("layer_in_place", tokens, dim, true, true, 0, 1e-6f, seed++);
      run_norm_case("layer_in_place_strided", tokens, dim, true, true, 4, 1e-6f, seed++);
    }
}

// ------------------------------------------------------------------------------------------------
// linear, silu_mul

void run_linear_case(int tokens, int in, int out, bool bias, int pad, uint32_t seed) {
  SCOPED_TRACE("tokens=" + std::to_string(tokens) + " in=" + std::to_string(in) + " out=" +
               std::to_string(out) + " bias=" + std::to_string(bias) + " pad=" + std::to_string(pad));
  std::mt19937 rng(seed);
  const int64_t xs = in + pad, ys = out + 2 * pad;
  const std::vector<float> x = uniform(size_t(tokens) * xs, rng);
  const std::vector<float> w = uniform(size_t(out) * in, rng);
  const std::vector<float> b = uniform(out, rng);
  std::vector<float> y(size_t(tokens) * ys, kNaN);

  cpu().linear({.x = x.data(), .x_stride = xs, .w = w.data(), .bias = bias ? b.data() : nullptr,
                .y = y.data(), .y_stride = ys, .tokens = tokens, .in = in, .out = out});

  Mismatches m;
  for (int t = 0; t < tokens; ++t) {
    for (int o = 0; o < out; ++o) {
      double acc = bias ? b[o] : 0.0, acc_abs = bias ? std::fabs(b[o]) : 0.0;
      for (int i = 0; i < in; ++i) {
        const double term = double(x[t * xs + i]) * w[size_t(o) * in + i];
        acc += term;
        acc_abs += std::fabs(term);
      }
      m.check(y[t * ys + o], acc, sum_tol(in + 1, acc_abs), t, o);
    }
    for (int o = out; o < ys; ++o) m.check_untouched_nan(y[t * ys + o], t, o);
  }
  EXPECT_NO_MISMATCH(m);
}

TEST(Linear, MatchesNaiveWithBiasAndStrides) {
  uint32_t seed = 8000;
  for (int tokens : {1, 7, 33})
    for (int in : {8, 33, 128})
      for (int out : {5, 16, 37})
        for (bool bias : {false, true})
          for (int pad : {0, 3}) run_linear_case(tokens, in, out, bias, pad, seed++);
  run_linear_case(7, 1000, 300, true, 1, seed++);
}

TEST(Linear, ZeroInputWidthGivesBias) {
  run_linear_case(7, 0, 5, true, 2, 8999);
  run_linear_case(3, 0, 4, false, 0, 8998);
}

TEST(SiluMul, MatchesNaive) {
  uint32_t seed = 9000;
  for (int64_t n : {1, 7, 33, 1000, 70000}) {
    for (bool alias : {false, true}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " alias=" + std::to_string(alias));
      std::mt19937 rng(seed++);
      std::vector<float> gate = uniform(n, rng, -8.0f, 8.0f);
      const std::vector<float> up = uniform(n, rng, -2.0f, 2.0f);
      if (n >= 7) {  // saturated ends: exp overflows / underflows in f32
        gate[0] = -100.0f;
        gate[1] = 100.0f;
        gate[2] = -1000.0f;
      }
      const std::vector<float> g0 = gate;
      std::vector<float> y_own(alias ? 0 : n, kNaN);
      float* y = alias ? gate.data() : y_own.data();
      cpu().silu_mul(gate.data(), up.data(), y, n);
      Mismatches m;
      for (int64_t i = 0; i < n; ++i) {
        const double g = g0[i];
        const double want = g / (1.0 + std::exp(-g)) * up[i];
        m.check(y[i], want, sum_tol(4, std::fabs(g * up[i])), i);
      }
      EXPECT_NO_MISMATCH(m);
    }
  }
}

// The kernels run the clone for the best x86-64 level this CPU has (simd_dispatch.h); under
// valgrind (no AVX-512) that is x86-64-v3, so every test above then checks the v3 clones.
TEST(KernelDispatch, PicksTheBestCloneThisCpuSupports) {
  const std::string target = cpu::kernel_target();
  std::cout << "CPU kernels: " << target << " clone\n";
#if INDEXCACHE_CPU_DISPATCH
  __builtin_cpu_init();
  const char* want = __builtin_cpu_supports("x86-64-v4")   ? "x86-64-v4"
                     : __builtin_cpu_supports("x86-64-v3") ? "x86-64-v3"
                                                           : "x86-64";
  EXPECT_EQ(target, want);
#else
  EXPECT_TRUE(target == "native" || target == "built-in") << target;
#endif
}

}  // namespace
}  // namespace indexcache
