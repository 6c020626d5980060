// Micro-benchmarks of the DSA kernels of the CPU backend at long context, each beside an OpenBLAS
// sgemm of (about) the same FLOP count, so "kernel GFLOP/s / sgemm GFLOP/s" can be read off one run.
//
// Shapes are the real DSA ones, with the query count cut for a CPU: a block of kQueries queries at
// the END of a context of L tokens (positions L-64..L-1), so each query sees ~L keys.
//   indexer   : 32 heads x 128 dims (GLM-5 indexer), scores against keys 0..L-1, causal.
//   topk      : k = 2048 over each query's causal prefix (valid = position + 1).
//   attention : absorbed MQA form: 16 heads, 576-d keys (512 latent + 64 rope), V = the first 512
//               dims of the same latent row, 2048 selected tokens per query in top-k order.
// FLOPs are counted exactly for the work the op has to do (causal pairs, valid selections), not
// for any padding a kernel computes. Also: the indexer at decode shape (one query) and its per-call
// overhead, an experimental head-batched sparse attention, and a 2048^3 sgemm as the machine's
// reference. Run (see docs/bench/cpu-kernels.md; read the medians):
//   bench_kernels --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//                 --benchmark_enable_random_interleaving=true
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/kernels.h"
#include "backend/cpu/simd_dispatch.h"

namespace indexcache {
namespace {

constexpr int kQueries = 64;
constexpr int kIndexHeads = 32, kIndexDim = 128;
constexpr int kTopk = 2048;
constexpr int kHeads = 16, kDk = 576, kDv = 512;

std::vector<float> random_vec(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Positions L-kQueries .. L-1 (clamped at 0 for tiny L).
std::vector<int32_t> tail_positions(int L) {
  std::vector<int32_t> pos(kQueries);
  for (int t = 0; t < kQueries; ++t) pos[t] = std::max(0, L - kQueries + t);
  return pos;
}

void set_flops(benchmark::State& st, double flops_per_iter) {
  st.counters["GFLOP/s"] = benchmark::Counter(flops_per_iter / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["GFLOP"] = flops_per_iter / 1e9;
}

void sgemm(int M, int N, int K, const float* a, const float* b_t, float* c) {
  // C[M, N] = A[M, K] * B[N, K]^T, the orientation of q . k (keys stored row-wise).
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a, K, b_t, K, 0.0f, c, N);
}

// ---- indexer ------------------------------------------------------------------------------------

void BM_IndexerScores(benchmark::State& st) {
  const int L = static_cast<int>(st.range(0));
  const std::vector<float> q = random_vec(size_t(kQueries) * kIndexHeads * kIndexDim, 1);
  const std::vector<float> w = random_vec(size_t(kQueries) * kIndexHeads, 2);
  const std::vector<float> k = random_vec(size_t(L) * kIndexDim, 3);
  const std::vector<int32_t> pos = tail_positions(L);
  std::vector<float> scores(size_t(kQueries) * L);
  const IndexerScoreParams p{.q = q.data(), .w = w.data(), .k = k.data(), .positions = pos.data(),
                             .scores = scores.data(), .scores_stride = L, .tokens = kQueries, .keys = L,
                             .heads = kIndexHeads, .head_dim = kIndexDim,
                             .scale = 1.0f / std::sqrt(float(kIndexDim))};
  for (auto _ : st) {
    cpu::indexer_scores(p);
    benchmark::DoNotOptimize(scores.data());
    benchmark::ClobberMemory();
  }
  double pairs = 0;
  for (int32_t p_t : pos) pairs += std::min(p_t + 1, L);
  // Per (query, key) pair: Hi dot products of Di (2*Hi*Di) + weighting and head sum (2*Hi).
  set_flops(st, pairs * (2.0 * kIndexHeads * kIndexDim + 2.0 * kIndexHeads));
}

// The benchmark loop of one query against L keys, the query at position `pos`.
void run_single_query_indexer(benchmark::State& st, int L, int32_t pos) {
  const std::vector<float> q = random_vec(size_t(kIndexHeads) * kIndexDim, 1);
  const std::vector<float> w = random_vec(kIndexHeads, 2);
  const std::vector<float> k = random_vec(size_t(L) * kIndexDim, 3);
  std::vector<float> scores(L);
  const IndexerScoreParams p{.q = q.data(), .w = w.data(), .k = k.data(), .positions = &pos,
                             .scores = scores.data(), .scores_stride = L, .tokens = 1, .keys = L,
                             .heads = kIndexHeads, .head_dim = kIndexDim,
                             .scale = 1.0f / std::sqrt(float(kIndexDim))};
  for (auto _ : st) {
    cpu::indexer_scores(p);
    benchmark::DoNotOptimize(scores.data());
    benchmark::ClobberMemory();
  }
}

// Decode shape: one query at position L-1. The kernel repacks all L keys on every call, which a
// 64-query block amortises and a single query does not.
void BM_IndexerScoresDecode(benchmark::State& st) {
  const int L = static_cast<int>(st.range(0));
  run_single_query_indexer(st, L, L - 1);
  set_flops(st, double(L) * (2.0 * kIndexHeads * kIndexDim + 2.0 * kIndexHeads));
}

// Per-call overhead: one query at position 0 scores a single key tile, but the call still packs
// all L keys and fills L scores with -inf. Its time is what every call pays before any FLOP.
void BM_IndexerScoresCallOverhead(benchmark::State& st) {
  const int L = static_cast<int>(st.range(0));
  run_single_query_indexer(st, L, 0);
  st.counters["key_MB"] = double(L) * kIndexDim * sizeof(float) / 1e6;
}

// The same q . k products as one dense sgemm: M = queries*heads, N = L, K = Di.
void BM_SgemmIndexerShape(benchmark::State& st) {
  const int L = static_cast<int>(st.range(0));
  const int M = kQueries * kIndexHeads, N = L, K = kIndexDim;
  const std::vector<float> a = random_vec(size_t(M) * K, 1);
  const std::vector<float> b = random_vec(size_t(N) * K, 3);
  std::vector<float> c(size_t(M) * N);
  for (auto _ : st) {
    sgemm(M, N, K, a.data(), b.data(), c.data());
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  set_flops(st, 2.0 * M * N * K);
}

// ---- top-k --------------------------------------------------------------------------------------

void BM_Topk(benchmark::State& st) {
  const int L = static_cast<int>(st.range(0));
  const std::vector<int32_t> pos = tail_positions(L);
  // Scores as the indexer leaves them: finite up to the position, -inf beyond.
  std::vector<float> scores = random_vec(size_t(kQueries) * L, 4, -3.0f, 3.0f);
  std::vector<int32_t> valid(kQueries);
  for (int t = 0; t < kQueries; ++t) {
    valid[t] = std::min(pos[t] + 1, L);
    std::fill(scores.begin() + size_t(t) * L + valid[t], scores.begin() + size_t(t + 1) * L,
              -std::numeric_limits<float>::infinity());
  }
  std::vector<int32_t> indices(size_t(kQueries) * kTopk);
  const TopkParams p{.scores = scores.data(), .scores_stride = L, .valid = valid.data(),
                     .indices = indices.data(), .tokens = kQueries, .k = kTopk};
  for (auto _ : st) {
    cpu::topk(p);
    benchmark::DoNotOptimize(indices.data());
    benchmark::ClobberMemory();
  }
  double candidates = 0;
  for (int32_t v : valid) candidates += v;
  st.counters["Mcand/s"] =
      benchmark::Counter(candidates / 1e6, benchmark::Counter::kIsIterationInvariantRate);
}

// ---- sparse attention ---------------------------------------------------------------------------

// Top-k style selections: rows with fewer than k candidates are 0..valid-1 then -1 (what topk
// returns); longer rows are k distinct tokens of the prefix in random (score) order.
std::vector<int32_t> random_selection(const std::vector<int32_t>& pos, int L, int k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> sel(size_t(pos.size()) * k, -1);
  std::vector<int32_t> pool;
  for (size_t t = 0; t < pos.size(); ++t) {
    const int valid = std::min(pos[t] + 1, L);
    int32_t* row = sel.data() + t * k;
    if (valid <= k) {
      std::iota(row, row + valid, 0);
      continue;
    }
    pool.resize(valid);
    std::iota(pool.begin(), pool.end(), 0);
    for (int i = 0; i < k; ++i) {  // partial Fisher-Yates
      std::uniform_int_distribution<int> pick(i, valid - 1);
      std::swap(pool[i], pool[pick(rng)]);
      row[i] = pool[i];
    }
  }
  return sel;
}

double selected_count(const std::vector<int32_t>& sel) {
  return static_cast<double>(std::count_if(sel.begin(), sel.end(), [](int32_t j) { return j >= 0; }));
}

void BM_SparseAttentionMqa(benchmark::State& st) {
  const int L = static_cast<int>(st.range(0));
  const std::vector<float> q = random_vec(size_t(kQueries) * kHeads * kDk, 5);
  const std::vector<float> kv = random_vec(size_t(L) * kDk, 6);  // latent (512) + rope (64)
  const std::vector<int32_t> pos = tail_positions(L);
  const std::vector<int32_t> sel = random_selection(pos, L, kTopk, 7);
  std::vector<float> out(size_t(kQueries) * kHeads * kDv);
  const SparseAttentionParams p{
      .q = q.data(), .q_token_stride = int64_t(kHeads) * kDk, .q_head_stride = kDk,
      .k = kv.data(), .k_token_stride = kDk, .k_head_stride = 0,
      .v = kv.data(), .v_token_stride = kDk, .v_head_stride = 0,
      .indices = sel.data(), .num_selected = kTopk, .out = out.data(),
      .out_token_stride = int64_t(kHeads) * kDv, .out_head_stride = kDv,
      .tokens = kQueries, .heads = kHeads, .kv_heads = 1, .head_dim_k = kDk, .head_dim_v = kDv,
      .scale = 1.0f / std::sqrt(192.0f)};
  for (auto _ : st) {
    cpu::sparse_attention(p);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  // Per selected token and head: q.k over Dk and p*v over Dv, 2 FLOPs each.
  set_flops(st, selected_count(sel) * 2.0 * (kDk + kDv) * kHeads);
}

// The same FLOPs as one dense sgemm: M = queries*heads, N = mean selected per query, K = Dk + Dv.
void BM_SgemmAttentionShape(benchmark::State& st) {
  const int L = static_cast<int>(st.range(0));
  const std::vector<int32_t> sel = random_selection(tail_positions(L), L, kTopk, 7);
  const int M = kQueries * kHeads, N = static_cast<int>(std::lround(selected_count(sel) / kQueries));
  const int K = kDk + kDv;
  const std::vector<float> a = random_vec(size_t(M) * K, 5);
  const std::vector<float> b = random_vec(size_t(N) * K, 6);
  std::vector<float> c(size_t(M) * N);
  for (auto _ : st) {
    sgemm(M, N, K, a.data(), b.data(), c.data());
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  set_flops(st, 2.0 * M * N * K);
}

// ---- experiment: head-batched sparse MQA attention ----------------------------------------------
// Not the backend kernel: a sketch measured beside it. In the absorbed (MQA) form all heads of a
// query share the selected rows, so each selected row is gathered ONCE per query (not once per
// head, twice) into a block of kGather rows, and both products run as small GEMMs over all heads,
// with an online softmax across blocks. OpenBLAS runs single-threaded inside the OpenMP loop.
void sparse_attention_mqa_gemm(const SparseAttentionParams& p) {
  constexpr int kGather = 128;
  const int H = p.heads, Dk = p.head_dim_k, Dv = p.head_dim_v;
  const bool v_in_k = p.v == p.k && p.v_token_stride == p.k_token_stride;  // V = first Dv of K
  const int saved_threads = openblas_get_num_threads();
  openblas_set_num_threads(1);
#pragma omp parallel
  {
    std::vector<float> kg(size_t(kGather) * Dk), vg(v_in_k ? 0 : size_t(kGather) * Dv);
    std::vector<float> qs(size_t(H) * Dk), s(size_t(H) * kGather), acc(size_t(H) * Dv), m(H), l(H);
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < p.tokens; ++t) {
      const int32_t* sel = p.indices + int64_t(t) * p.num_selected;
      for (int h = 0; h < H; ++h)
        for (int d = 0; d < Dk; ++d)
          qs[size_t(h) * Dk + d] = p.q[t * p.q_token_stride + h * p.q_head_stride + d] * p.scale;
      std::fill(acc.begin(), acc.end(), 0.0f);
      std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
      std::fill(l.begin(), l.end(), 0.0f);
      for (int i = 0; i < p.num_selected;) {
        int nb = 0;
        for (; i < p.num_selected && nb < kGather; ++i) {
          if (sel[i] < 0) continue;
          std::copy_n(p.k + sel[i] * p.k_token_stride, Dk, kg.data() + size_t(nb) * Dk);
          if (!v_in_k) std::copy_n(p.v + sel[i] * p.v_token_stride, Dv, vg.data() + size_t(nb) * Dv);
          ++nb;
        }
        if (nb == 0) break;
        // s[H, nb] = qs[H, Dk] . kg[nb, Dk]^T
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, H, nb, Dk, 1.0f, qs.data(), Dk, kg.data(),
                    Dk, 0.0f, s.data(), kGather);
        for (int h = 0; h < H; ++h) {
          float* sh = s.data() + size_t(h) * kGather;
          const float mx = std::max(m[h], *std::max_element(sh, sh + nb));
          const float alpha = std::exp(m[h] - mx);
          float sum = 0;
          for (int j = 0; j < nb; ++j) sum += (sh[j] = std::exp(sh[j] - mx));
          l[h] = l[h] * alpha + sum;
          m[h] = mx;
          if (alpha != 1.0f)
            for (int d = 0; d < Dv; ++d) acc[size_t(h) * Dv + d] *= alpha;
        }
        // acc[H, Dv] += s[H, nb] . V[nb, Dv]
        const float* vb = v_in_k ? kg.data() : vg.data();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, H, Dv, nb, 1.0f, s.data(), kGather, vb,
                    v_in_k ? Dk : Dv, 1.0f, acc.data(), Dv);
      }
      for (int h = 0; h < H; ++h) {
        float* o = p.out + t * p.out_token_stride + h * p.out_head_stride;
        const float inv = l[h] > 0 ? 1.0f / l[h] : 0.0f;
        for (int d = 0; d < Dv; ++d) o[d] = acc[size_t(h) * Dv + d] * inv;
      }
    }
  }
  openblas_set_num_threads(saved_threads);
}

void BM_ExperimentSparseAttentionMqaGemm(benchmark::State& st) {
  const int L = static_cast<int>(st.range(0));
  const std::vector<float> q = random_vec(size_t(kQueries) * kHeads * kDk, 5);
  const std::vector<float> kv = random_vec(size_t(L) * kDk, 6);
  const std::vector<int32_t> pos = tail_positions(L);
  const std::vector<int32_t> sel = random_selection(pos, L, kTopk, 7);
  std::vector<float> out(size_t(kQueries) * kHeads * kDv), want(out.size());
  SparseAttentionParams p{
      .q = q.data(), .q_token_stride = int64_t(kHeads) * kDk, .q_head_stride = kDk,
      .k = kv.data(), .k_token_stride = kDk, .k_head_stride = 0,
      .v = kv.data(), .v_token_stride = kDk, .v_head_stride = 0,
      .indices = sel.data(), .num_selected = kTopk, .out = want.data(),
      .out_token_stride = int64_t(kHeads) * kDv, .out_head_stride = kDv,
      .tokens = kQueries, .heads = kHeads, .kv_heads = 1, .head_dim_k = kDk, .head_dim_v = kDv,
      .scale = 1.0f / std::sqrt(192.0f)};
  cpu::sparse_attention(p);
  p.out = out.data();
  sparse_attention_mqa_gemm(p);
  double worst = 0;  // relative to the output scale (values are averages of U(-1,1))
  for (size_t i = 0; i < out.size(); ++i) worst = std::max(worst, double(std::fabs(out[i] - want[i])));
  if (!(worst < 1e-4)) {
    st.SkipWithError("experiment disagrees with cpu::sparse_attention");
    return;
  }
  for (auto _ : st) {
    sparse_attention_mqa_gemm(p);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  st.counters["max_abs_diff"] = worst;
  set_flops(st, selected_count(sel) * 2.0 * (kDk + kDv) * kHeads);
}

// Machine reference: a large square sgemm (what OpenBLAS reaches when it is compute-bound).
void BM_SgemmSquare2048(benchmark::State& st) {
  const int n = 2048;
  const std::vector<float> a = random_vec(size_t(n) * n, 1), b = random_vec(size_t(n) * n, 2);
  std::vector<float> c(size_t(n) * n);
  for (auto _ : st) {
    sgemm(n, n, n, a.data(), b.data(), c.data());
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  set_flops(st, 2.0 * n * n * n);
}

void contexts(benchmark::internal::Benchmark* b) {
  for (int L : {1024, 2048, 4096, 8192, 16384}) b->Arg(L);
  b->ArgName("ctx")->UseRealTime()->Unit(benchmark::kMillisecond);
}

BENCHMARK(BM_IndexerScores)->Apply(contexts);
BENCHMARK(BM_SgemmIndexerShape)->Apply(contexts);
BENCHMARK(BM_IndexerScoresDecode)->Apply(contexts);
BENCHMARK(BM_IndexerScoresCallOverhead)->Apply(contexts);
BENCHMARK(BM_Topk)->Apply(contexts);
BENCHMARK(BM_SparseAttentionMqa)->Apply(contexts);
BENCHMARK(BM_SgemmAttentionShape)->Apply(contexts);
BENCHMARK(BM_ExperimentSparseAttentionMqaGemm)->Apply(contexts);
BENCHMARK(BM_SgemmSquare2048)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace indexcache

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("omp_max_threads", std::to_string(omp_get_max_threads()));
  benchmark::AddCustomContext("openblas_threads", std::to_string(openblas_get_num_threads()));
  benchmark::AddCustomContext("openblas_core", openblas_get_corename());
  benchmark::AddCustomContext("openblas_config", openblas_get_config());
  benchmark::AddCustomContext("cpu_kernels", indexcache::cpu::kernel_target());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
