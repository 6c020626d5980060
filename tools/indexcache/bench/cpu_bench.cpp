// The CPU path of `indexcache bench`: the preset's model with random bf16 weights drawn in
// memory from the checkpoint schema (Model::synthetic), timed through a Session: chunked prefill,
// then decode steps. The backend's op profile sorts each op into the report's classes.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <random>
#include <span>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "backend/backend.h"
#include "bench/bench_run.h"
#include "indexcache/error.h"
#include "indexcache/model.h"
#include "indexcache/session.h"

namespace indexcache::bench {

namespace {

using Clock = std::chrono::steady_clock;

constexpr double kCpuRamLimit = 8.0 * 1024 * 1024 * 1024;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The report's classes from the backend's op profile of a phase that took `wall` seconds:
// projections (dense MLPs and per-head ones included) are `gemm`, the MoE op (routing, routed and
// shared experts) is `moe`; `other` is what no timed class accounts for.
ClassSeconds classes_of(const OpProfile& p, double wall) {
  ClassSeconds c;
  c.gemm = p.of(OpKind::kLinear) + p.of(OpKind::kLinearHeads) + p.of(OpKind::kMlp);
  c.moe = p.of(OpKind::kMoe);
  c.attention = p.of(OpKind::kSparseAttention);
  c.indexer = p.of(OpKind::kIndexerScores);
  c.topk = p.of(OpKind::kTopk);
  c.other = std::max(0.0, wall - (c.gemm + c.moe + c.attention + c.indexer + c.topk));
  return c;
}

std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t c = line.find(':');
      if (c != std::string::npos) {
        size_t b = c + 1;
        while (b < line.size() && line[b] == ' ') ++b;
        return line.substr(b);
      }
    }
  }
  return "unknown CPU";
}

}  // namespace

// The f32 weights, the per-head transposed kv_b, the f32 KV cache for the longest request, and
// chunk activations.
double cpu_bytes_needed(const ModelSpec& s, int64_t max_ctx, int64_t chunk) {
  const double params = static_cast<double>(parameter_count(s));
  const double L = s.num_layers, H = s.hidden_size, nh = s.num_heads;
  const double lat = s.kv_lora_rank + s.qk_rope_head_dim;
  double b = params * 6;  // the random bf16 weights and the CPU backend's f32 copy of them
  b += L * nh * s.kv_lora_rank * s.qk_nope_head_dim * 6.0;  // uk_t, likewise
  b += static_cast<double>(max_ctx) * L * (lat + s.index_head_dim) * 4.0;
  const double t = static_cast<double>(std::min(chunk, max_ctx));
  const double inter = std::max<double>(s.intermediate_size, s.moe_intermediate_size * std::max(1, s.n_shared_experts));
  b += t * 4.0 *
       (3 * nh * lat + nh * s.qk_head_dim() + s.index_n_heads * s.index_head_dim + nh * s.v_head_dim + 16 * H +
        3 * inter + L * s.index_topk);
  b += 256.0 * static_cast<double>(max_ctx) * 4.0;  // indexer score block
  b += static_cast<double>(s.vocab_size) * 4.0 * 2;
  return b;
}

void check_cpu_fits(const BenchSetup& setup, double need) {
  if (need > kCpuRamLimit)
    throw_bad_input("--synthetic " + setup.preset.name,
                    "needs about " + format_bytes(need) + " of RAM on the CPU (limit " + format_bytes(kCpuRamLimit) +
                        "); trim it with --layers N / --experts E, shorten --ctx, or use --device cuda");
}

MachineInfo cpu_machine_info() {
  MachineInfo m;
  m.device = "cpu";
  m.name = cpu_model_name();
#ifdef _OPENMP
  m.threads = omp_get_max_threads();
#else
  m.threads = 1;
#endif
  m.memory_gib = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE) / (1024.0 * 1024 * 1024);
  return m;
}

BenchReport run_cpu_bench(const BenchSetup& setup, Progress& progress) {
  check_cpu_fits(setup, cpu_bytes_needed(setup.preset.spec, setup.max_context(), setup.chunk));
  BenchReport r = report_skeleton(setup);
  auto cpu = make_cpu_backend(setup.options.device.threads);  // sets OpenMP's threads (--threads)
  r.machine = cpu_machine_info();
  return run_session_bench(setup, progress, *cpu, std::move(r), /*profile_ops=*/true);
}

BenchReport run_session_bench(const BenchSetup& setup, Progress& progress, Backend& be, BenchReport r,
                              bool profile_ops) {
  const BenchOptions& o = setup.options;
  const ModelSpec& spec = setup.preset.spec;
  progress.note("generating " + setup.preset.name + " with random bf16 weights (" +
           format_bytes(static_cast<double>(parameter_count(spec)) * 2) + " in host memory)");
  // Every layer's indexer is there: every plan of the matrix runs on one model.
  auto model = Model::synthetic(spec, o.seed);
  OpProfile profile;
  if (profile_ops) be.set_profile(&profile);

  std::mt19937_64 rng(o.seed ^ 0x9E3779B97F4A7C15ull);
  std::uniform_int_distribution<int32_t> tok(0, spec.vocab_size - 1);

  {
    // Warm-up: first touches of the weights and the thread pool stay out of the first cell.
    const int64_t warm = std::min<int64_t>(*std::min_element(o.ctx.begin(), o.ctx.end()), 256);
    std::vector<int32_t> ids(static_cast<size_t>(warm + 2));
    for (auto& v : ids) v = tok(rng);
    Session session(*model, setup.plans.front().plan, be);
    ForwardOptions fo;
    fo.logits = LogitsWanted::kLast;
    session.forward(std::span<const int32_t>(ids.data(), static_cast<size_t>(warm)), fo);
    for (int i = 0; i < 2; ++i) session.forward(std::span<const int32_t>(ids.data() + warm + i, 1), fo);
  }

  for (int64_t ctx : o.ctx) {
    std::vector<int32_t> ids(static_cast<size_t>(ctx));
    for (auto& v : ids) v = tok(rng);
    std::vector<int32_t> steps(static_cast<size_t>(setup.decode_steps));
    for (auto& v : steps) v = tok(rng);
    for (const auto& np : setup.plans) {
      model->check_plan(np.plan);
      Session session(*model, np.plan, be);
      // The cache for the whole run up front, as the GPU runner allocates its own.
      session.reserve(static_cast<int>(ctx + (o.decode ? setup.decode_steps : 0)));
      std::vector<PhaseStats> pre_runs, dec_runs;
      for (int rep = 0; rep < o.repeat; ++rep) {
        session.reset();
        profile = {};
        auto t0 = Clock::now();
        for (int64_t start = 0; start < ctx; start += setup.chunk) {
          const int64_t n = std::min<int64_t>(setup.chunk, ctx - start);
          ForwardOptions fo;
          fo.logits = start + n == ctx ? LogitsWanted::kLast : LogitsWanted::kNone;
          session.forward(std::span<const int32_t>(ids.data() + start, static_cast<size_t>(n)), fo);
        }
        const double pre_s = seconds_since(t0);
        if (o.prefill) {
          PhaseStats p;
          p.seconds = pre_s;
          p.tokens = ctx;
          if (profile_ops) p.classes = classes_of(profile, pre_s);
          p.flops = count_prefill_flops(spec, np.plan, ctx);
          pre_runs.push_back(p);
        }
        if (o.decode) {
          profile = {};
          t0 = Clock::now();
          ForwardOptions fo;
          fo.logits = LogitsWanted::kLast;
          for (int32_t id : steps) session.forward(std::span<const int32_t>(&id, 1), fo);
          const double dec_s = seconds_since(t0);
          PhaseStats d;
          d.seconds = dec_s;
          d.tokens = setup.decode_steps;
          if (profile_ops) d.classes = classes_of(profile, dec_s);
          d.flops = count_decode_flops(spec, np.plan, ctx, setup.decode_steps);
          dec_runs.push_back(d);
        }
      }
      BenchRow row;
      row.ctx = ctx;
      row.plan = np.text;
      row.pattern = np.plan.pattern();
      row.full_layers = np.plan.num_full();
      char line[160];
      std::snprintf(line, sizeof line, "ctx %lld plan %s:", static_cast<long long>(ctx), np.text.c_str());
      std::string msg = line;
      if (o.prefill) {
        row.prefill = median_run(std::move(pre_runs));
        std::snprintf(line, sizeof line, " prefill %.4g s", row.prefill->seconds);
        msg += line;
      }
      if (o.decode) {
        row.decode = median_run(std::move(dec_runs));
        std::snprintf(line, sizeof line, " decode %.1f tok/s", row.decode->tokens / row.decode->seconds);
        msg += line;
      }
      progress.note(msg);
      r.rows.push_back(std::move(row));
    }
  }
  be.set_profile(nullptr);
  return r;
}

}  // namespace indexcache::bench
