// `indexcache bench --mode serve`: `clients` concurrent requests of ctx random prompt tokens and
// decode_steps new tokens each, submitted at once to the continuous-batching Scheduler over a
// BatchSession on the CPU, per ctx x plan: throughput, the saturated decode rate, and TTFT /
// inter-token latency percentiles from each token's arrival time at its sink.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <random>

#include "backend/backend.h"
#include "bench/bench_run.h"
#include "indexcache/batch_session.h"
#include "indexcache/error.h"
#include "indexcache/model.h"
#include "indexcache/scheduler.h"

namespace indexcache::bench {

namespace {

using Clock = std::chrono::steady_clock;
constexpr int kPageTokens = 64;

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
  return v[std::clamp<size_t>(rank, 1, v.size()) - 1];
}

// One run: every client's token arrival times, relative to the submissions.
struct Arrivals {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::vector<double>> times;  // per client
  int finished = 0;
  std::string error;
};

ServeRow run_once(const Model& model, const NamedPlan& np, Backend& be, int64_t ctx, int clients, int out,
                  int64_t chunk, std::mt19937_64& rng) {
  const ModelSpec& spec = model.spec();
  const int64_t pages = clients * ((ctx + out + kPageTokens - 1) / kPageTokens);
  BatchSession batch(model, {np.plan}, be, {.page_tokens = kPageTokens, .pages = pages});
  Scheduler sched(batch, {.max_step_tokens = static_cast<int>(chunk), .max_running = clients, .max_waiting = clients});
  sched.set_profile_every(4);
  std::uniform_int_distribution<int32_t> tok(0, spec.vocab_size - 1);
  std::vector<Request> requests(clients);
  for (Request& r : requests) {
    r.prompt.resize(static_cast<size_t>(ctx));
    for (int32_t& v : r.prompt) v = tok(rng);
    r.max_tokens = out;
  }
  Arrivals a;
  a.times.resize(clients);
  sched.start();
  const Clock::time_point t0 = Clock::now();
  for (int c = 0; c < clients; ++c)
    sched.submit(requests[c], [&a, c, t0](const RequestEvent& e) {
      const double t = std::chrono::duration<double>(Clock::now() - t0).count();
      std::lock_guard lock(a.mu);
      for (size_t i = 0; i < e.tokens.size(); ++i) a.times[c].push_back(t);
      if (e.finish != FinishReason::kNone) {
        if (e.finish == FinishReason::kError && a.error.empty()) a.error = e.error;
        ++a.finished;
        a.cv.notify_all();
      }
    });
  {
    std::unique_lock lock(a.mu);
    a.cv.wait(lock, [&] { return a.finished == clients; });
  }
  sched.drain();
  if (!a.error.empty()) throw_runtime("bench --mode serve", a.error);
  const SchedulerStats st = sched.stats();
  sched.stop();

  ServeRow w;
  w.ctx = ctx;
  w.plan = np.text;
  w.pattern = np.plan.pattern();
  w.full_layers = np.plan.num_full();
  w.clients = clients;
  w.output_tokens = out;
  w.page_tokens = kPageTokens;
  w.pages = pages;
  double last_first = 0, first_last = 1e300, end = 0;
  std::vector<double> ttft, itl;
  for (const auto& t : a.times) {
    if (t.empty()) continue;
    w.generated += static_cast<int64_t>(t.size());
    ttft.push_back(t.front());
    for (size_t i = 1; i < t.size(); ++i) itl.push_back(t[i] - t[i - 1]);
    last_first = std::max(last_first, t.front());
    first_last = std::min(first_last, t.back());
    end = std::max(end, t.back());
  }
  w.seconds = end;
  w.total_tok_s = end > 0 ? static_cast<double>(w.generated) / end : 0;
  if (first_last > last_first) {
    int64_t in_window = 0;
    for (const auto& t : a.times)
      for (double x : t) in_window += x > last_first && x <= first_last;
    w.decode_tok_s = static_cast<double>(in_window) / (first_last - last_first);
  }
  w.ttft_p50 = percentile(ttft, 0.5);
  w.ttft_p90 = percentile(ttft, 0.9);
  w.ttft_p99 = percentile(ttft, 0.99);
  w.itl_p50 = percentile(itl, 0.5);
  w.itl_p90 = percentile(itl, 0.9);
  w.itl_p99 = percentile(itl, 0.99);
  if (st.profiled_seconds > 0) w.indexer_share = st.indexer_seconds / st.profiled_seconds;
  return w;
}

}  // namespace

BenchReport run_serve_bench(const BenchSetup& setup, Progress& progress) {
  const BenchOptions& o = setup.options;
  const ModelSpec& spec = setup.preset.spec;
  const int out = setup.decode_steps;
  // The weights and activations of one chunk, plus every client's cache.
  const double cache = static_cast<double>(o.clients) * static_cast<double>(setup.max_context()) * spec.num_layers *
                       (spec.kv_lora_rank + spec.qk_rope_head_dim + spec.index_head_dim) * 4.0;
  check_cpu_fits(setup, cpu_bytes_needed(spec, setup.max_context(), setup.chunk) + cache);
  BenchReport r = report_skeleton(setup);
  auto be = make_cpu_backend(o.device.threads);
  r.machine = cpu_machine_info();
  progress.note("generating " + setup.preset.name + " with random bf16 weights");
  auto model = Model::synthetic(spec, o.seed);
  model->place(*be);
  std::mt19937_64 rng(o.seed ^ 0x9E3779B97F4A7C15ull);
  for (int64_t ctx : o.ctx)
    for (const NamedPlan& np : setup.plans) {
      model->check_plan(np.plan);
      std::vector<ServeRow> runs;
      for (int rep = 0; rep < o.repeat; ++rep) runs.push_back(run_once(*model, np, *be, ctx, o.clients, out, setup.chunk, rng));
      std::sort(runs.begin(), runs.end(), [](const ServeRow& a, const ServeRow& b) { return a.seconds < b.seconds; });
      ServeRow w = runs[(runs.size() - 1) / 2];
      char line[200];
      std::snprintf(line, sizeof line, "ctx %lld plan %s, %d clients: %.1f tok/s total, %.1f tok/s decoding",
                    static_cast<long long>(ctx), np.text.c_str(), o.clients, w.total_tok_s,
                    w.decode_tok_s.value_or(0.0));
      progress.note(line);
      r.serve.push_back(std::move(w));
    }
  return r;
}

}  // namespace indexcache::bench
