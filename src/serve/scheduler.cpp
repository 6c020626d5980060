// Continuous batching: a bounded queue, admission by reserved KV pages, steps of decode tokens
// then prefill chunks under a token budget, per-request sampling and events, and the counters
// /metrics reads.
#include "indexcache/scheduler.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <set>
#include <thread>

#include "indexcache/batch_session.h"
#include "indexcache/error.h"
#include "indexcache/model.h"
#include "model/logits_check.h"

namespace indexcache {

namespace {

using Clock = std::chrono::steady_clock;

double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

std::vector<double> latency_bounds() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
}

PlanStats new_plan_stats() {
  PlanStats p;
  p.time_to_first_token = Histogram(latency_bounds());
  p.inter_token = Histogram(latency_bounds());
  return p;
}

int64_t pages_for(int64_t tokens, int page_tokens) { return (tokens + page_tokens - 1) / page_tokens; }

// A request from submission to its last event.
struct Live {
  int64_t id = 0;
  Request req;
  EventSink sink;
  Sampler sampler;
  int64_t sequence = -1;
  int64_t reserved = 0;  // pages reserved for prompt + max_tokens
  int prefilled = 0;
  int generated = 0;
  int32_t pending = 0;   // the last sampled token, fed by the next step
  bool has_pending = false;
  Clock::time_point submitted, last_token;
  Live(int64_t i, Request r, EventSink s)
      : id(i), req(std::move(r)), sink(std::move(s)), sampler(req.sampler), submitted(Clock::now()) {}
};

// What a step decided to tell a request, sent after the step with no lock held.
struct Outgoing {
  Live* live;  // owned by `finished` when the event is the last
  RequestEvent event;
};

}  // namespace

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kNone: return "";
    case FinishReason::kLength: return "length";
    case FinishReason::kStop: return "stop";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
  }
  return "";
}

void Histogram::add(double v) {
  const size_t i = static_cast<size_t>(std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin());
  ++counts[i];
  sum += v;
  ++count;
}

struct Scheduler::Impl {
  BatchSession& batch;
  SchedulerOptions opt;
  std::mutex batch_mu;  // the engine's steps and add_plan

  mutable std::mutex mu;  // everything below
  std::condition_variable wake, idle;
  std::deque<std::unique_ptr<Live>> waiting;
  std::set<int64_t> cancels;
  int64_t next_id = 1;
  int running_count = 0;
  int plan_count = 0;
  bool accepting = true, stopping = false;
  SchedulerStats stats;
  int profile_every = 0;

  // The engine's own (the thread running steps).
  std::vector<std::unique_ptr<Live>> running;
  int64_t reserved = 0;
  std::thread thread;

  Impl(BatchSession& b, const SchedulerOptions& o) : batch(b), opt(o) {
    if (o.max_step_tokens < 1) throw_bad_input("max_step_tokens", "must be >= 1");
    if (o.max_running < 1) throw_bad_input("max_running", "must be >= 1");
    if (o.max_waiting < 1) throw_bad_input("max_waiting", "must be >= 1");
    stats.step_seconds = Histogram(latency_bounds());
    plan_count = static_cast<int>(batch.plans().size());
    for (int i = 0; i < plan_count; ++i) stats.plans.push_back(new_plan_stats());
    snapshot_pages();
  }

  void snapshot_pages() {  // under mu, by the engine
    stats.pages_total = batch.pages_total();
    stats.pages_free = batch.pages_free();
    stats.pages_used = stats.pages_total - stats.pages_free;
    stats.running = running_count;
    stats.waiting = static_cast<int>(waiting.size());
  }

  void finish(Live& r, FinishReason why, const std::string& error, std::vector<Outgoing>& out) {
    if (r.sequence >= 0) batch.close(r.sequence);
    r.sequence = -1;
    reserved -= r.reserved;
    r.reserved = 0;
    RequestEvent e;
    e.finish = why;
    e.error = error;
    e.prompt_tokens = static_cast<int>(r.req.prompt.size());
    e.completion_tokens = r.generated;
    out.push_back({&r, std::move(e)});
  }

  bool step();
};

bool Scheduler::Impl::step() {
  std::vector<Outgoing> out;
  std::vector<std::unique_ptr<Live>> done;  // requests whose last event is in `out`
  std::unique_lock batch_lock(batch_mu);
  // Cancellations, then admission in arrival order while the pool can reserve the head's pages.
  {
    std::lock_guard lock(mu);
    for (auto it = waiting.begin(); it != waiting.end();) {
      if (cancels.count((*it)->id)) {
        finish(**it, FinishReason::kCancelled, "", out);
        done.push_back(std::move(*it));
        it = waiting.erase(it);
      } else {
        ++it;
      }
    }
    for (auto it = running.begin(); it != running.end();) {
      if (cancels.count((*it)->id)) {
        finish(**it, FinishReason::kCancelled, "", out);
        done.push_back(std::move(*it));
        it = running.erase(it);
      } else {
        ++it;
      }
    }
    cancels.clear();
    while (!waiting.empty() && static_cast<int>(running.size()) < opt.max_running) {
      Live& r = *waiting.front();
      const int64_t need = pages_for(static_cast<int64_t>(r.req.prompt.size()) + r.req.max_tokens, batch.page_tokens());
      if (reserved + need > batch.pages_total()) break;
      r.sequence = batch.open(r.req.plan);
      r.reserved = need;
      reserved += need;
      running.push_back(std::move(waiting.front()));
      waiting.pop_front();
    }
    running_count = static_cast<int>(running.size());
  }

  // The step: one decode token of every request that has one, then prefill chunks in order.
  std::vector<BatchSession::Piece> pieces;
  std::vector<Live*> owners;
  for (auto& r : running)
    if (r->has_pending) {
      pieces.push_back({.sequence = r->sequence, .ids = std::span(&r->pending, 1), .logits = true});
      owners.push_back(r.get());
    }
  int budget = std::max(0, opt.max_step_tokens - static_cast<int>(pieces.size()));
  for (auto& r : running) {
    const int left = static_cast<int>(r->req.prompt.size()) - r->prefilled;
    if (left == 0 || budget == 0) continue;
    const int m = std::min(left, budget);
    pieces.push_back({.sequence = r->sequence, .ids = std::span(r->req.prompt).subspan(r->prefilled, m),
                      .logits = m == left});
    owners.push_back(r.get());
    budget -= m;
  }

  bool profiled = false;
  StepProfile profile;
  const Clock::time_point t0 = Clock::now();
  std::vector<std::vector<float>> logits;
  std::string failure;
  if (!pieces.empty()) {
    int every;
    {
      std::lock_guard lock(mu);
      every = profile_every;
      profiled = every > 0 && (stats.steps + 1) % every == 0;
    }
    try {
      logits = batch.step(pieces, profiled ? &profile : nullptr);
    } catch (const std::exception& e) {
      failure = e.what();  // the step's requests fail; the others go on
    }
  }
  const Clock::time_point t1 = Clock::now();

  std::vector<int64_t> prompt_tokens(stats.plans.size(), 0);
  struct Sampled {
    Live* r;
    bool first;
    double gap;
  };
  std::vector<Sampled> sampled;
  std::set<Live*> failed;
  for (size_t i = 0; i < pieces.size(); ++i) {
    Live& r = *owners[i];
    if (!failure.empty()) {
      failed.insert(&r);
      continue;
    }
    if (!r.has_pending) {
      r.prefilled += static_cast<int>(pieces[i].ids.size());
      prompt_tokens[r.req.plan] += static_cast<int64_t>(pieces[i].ids.size());
    }
    if (!pieces[i].logits) continue;
    int32_t token;
    try {
      check_logits_finite(logits[i], static_cast<int64_t>(logits[i].size()), batch.length(r.sequence) - 1);
      token = r.sampler.sample(logits[i]);
    } catch (const std::exception& e) {
      failed.insert(&r);
      if (failure.empty()) failure = e.what();
      continue;
    }
    const bool first = r.generated == 0;
    ++r.generated;
    r.pending = token;
    r.has_pending = true;
    sampled.push_back({&r, first, seconds(first ? r.submitted : r.last_token, t1)});
    r.last_token = t1;
    RequestEvent e;
    e.tokens = {token};
    e.prompt_tokens = static_cast<int>(r.req.prompt.size());
    e.completion_tokens = r.generated;
    const bool stop = std::find(r.req.stop_ids.begin(), r.req.stop_ids.end(), token) != r.req.stop_ids.end();
    if (stop || r.generated >= r.req.max_tokens) {
      if (r.sequence >= 0) batch.close(r.sequence);
      r.sequence = -1;
      reserved -= r.reserved;
      r.reserved = 0;
      e.finish = stop ? FinishReason::kStop : FinishReason::kLength;
    }
    out.push_back({&r, std::move(e)});
  }
  for (Live* r : failed) finish(*r, FinishReason::kError, failure, out);
  // Requests whose last event is out leave the running set (owned by `done` until sent).
  for (auto it = running.begin(); it != running.end();) {
    Live* r = it->get();
    const bool last = std::any_of(out.begin(), out.end(),
                                  [&](const Outgoing& o) { return o.live == r && o.event.finish != FinishReason::kNone; });
    if (last) {
      done.push_back(std::move(*it));
      it = running.erase(it);
    } else {
      ++it;
    }
  }
  {
    std::lock_guard lock(mu);
    running_count = static_cast<int>(running.size());
    if (!pieces.empty()) {
      ++stats.steps;
      stats.step_seconds.add(seconds(t0, t1));
      if (profiled) {
        stats.profiled_seconds += profile.seconds;
        stats.indexer_seconds += profile.indexer_seconds;
      }
    }
    for (size_t p = 0; p < prompt_tokens.size(); ++p) stats.plans[p].prompt_tokens += prompt_tokens[p];
    for (const Sampled& s : sampled) {
      PlanStats& ps = stats.plans[s.r->req.plan];
      ++ps.generated_tokens;
      (s.first ? ps.time_to_first_token : ps.inter_token).add(s.gap);
    }
    for (const Outgoing& o : out)
      if (o.event.finish != FinishReason::kNone) ++stats.plans[o.live->req.plan].requests;
    snapshot_pages();
  }
  batch_lock.unlock();
  for (Outgoing& o : out)
    if (o.live->sink) o.live->sink(o.event);
  if (running.empty()) {
    std::lock_guard lock(mu);
    if (waiting.empty()) idle.notify_all();
  }
  return !pieces.empty() || !out.empty();
}

Scheduler::Scheduler(BatchSession& batch, const SchedulerOptions& options)
    : impl_(std::make_unique<Impl>(batch, options)) {}

Scheduler::~Scheduler() { stop(); }

int64_t Scheduler::submit(Request request, EventSink sink) {
  Impl& m = *impl_;
  const ModelSpec& s = m.batch.model().spec();
  if (request.prompt.empty()) throw_bad_input("prompt", "empty");
  for (int32_t id : request.prompt)
    if (id < 0 || id >= s.vocab_size)
      throw_bad_input("prompt", "token id " + std::to_string(id) + " outside the vocabulary [0, " +
                                    std::to_string(s.vocab_size) + ")");
  if (request.max_tokens < 1) throw_bad_input("max_tokens", "must be >= 1");
  const int64_t total = static_cast<int64_t>(request.prompt.size()) + request.max_tokens;
  if (total > s.max_position_embeddings)
    throw_bad_input("prompt", std::to_string(request.prompt.size()) + " prompt tokens + max_tokens " +
                                  std::to_string(request.max_tokens) + " exceed the context of " +
                                  std::to_string(s.max_position_embeddings) + " tokens");
  const int64_t need = pages_for(total, m.batch.page_tokens());
  if (need > m.batch.pages_total())
    throw_bad_input("prompt", "needs " + std::to_string(need) + " KV pages, the pool has " +
                                  std::to_string(m.batch.pages_total()));
  auto live = std::make_unique<Live>(0, std::move(request), std::move(sink));  // checks the sampler
  std::lock_guard lock(m.mu);
  if (live->req.plan < 0 || live->req.plan >= m.plan_count)
    throw_bad_input("plan", "no plan " + std::to_string(live->req.plan));
  if (!m.accepting) throw_runtime("server", "shutting down");
  if (static_cast<int>(m.waiting.size()) >= m.opt.max_waiting)
    throw_runtime("server", "queue full: " + std::to_string(m.waiting.size()) + " requests wait already");
  live->id = m.next_id++;
  const int64_t id = live->id;
  m.waiting.push_back(std::move(live));
  m.stats.waiting = static_cast<int>(m.waiting.size());
  m.wake.notify_all();
  return id;
}

void Scheduler::cancel(int64_t id) {
  std::lock_guard lock(impl_->mu);
  impl_->cancels.insert(id);
  impl_->wake.notify_all();
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->stats;
}

int Scheduler::add_plan(const IndexPlan& plan) {
  std::lock_guard batch_lock(impl_->batch_mu);
  const int i = impl_->batch.add_plan(plan);
  std::lock_guard lock(impl_->mu);
  while (static_cast<int>(impl_->stats.plans.size()) <= i) impl_->stats.plans.push_back(new_plan_stats());
  impl_->plan_count = static_cast<int>(impl_->batch.plans().size());
  return i;
}

void Scheduler::set_profile_every(int every) {
  std::lock_guard lock(impl_->mu);
  impl_->profile_every = std::max(0, every);
}

bool Scheduler::step() { return impl_->step(); }

void Scheduler::start() {
  Impl& m = *impl_;
  if (m.thread.joinable()) return;
  m.thread = std::thread([&m] {
    while (true) {
      {
        std::lock_guard lock(m.mu);
        if (m.stopping) return;
      }
      if (m.step()) continue;
      std::unique_lock lock(m.mu);
      m.wake.wait(lock, [&] { return m.stopping || !m.waiting.empty() || !m.cancels.empty(); });
    }
  });
}

void Scheduler::drain() {
  Impl& m = *impl_;
  {
    std::lock_guard lock(m.mu);
    m.accepting = false;
  }
  if (!m.thread.joinable()) {
    while (m.step()) {
    }
    return;
  }
  std::unique_lock lock(m.mu);
  m.idle.wait(lock, [&] { return (m.waiting.empty() && m.running_count == 0) || m.stopping; });
}

void Scheduler::stop() {
  Impl& m = *impl_;
  {
    std::lock_guard lock(m.mu);
    m.accepting = false;
    m.stopping = true;
    for (const auto& r : m.waiting) m.cancels.insert(r->id);
    m.wake.notify_all();
  }
  if (m.thread.joinable()) m.thread.join();
  // Whatever is left is cancelled here, on this thread (the engine's has ended).
  {
    std::lock_guard lock(m.mu);
    for (const auto& r : m.running) m.cancels.insert(r->id);
    for (const auto& r : m.waiting) m.cancels.insert(r->id);
    m.accepting = false;
    m.opt.max_running = 0;  // admit nothing more
  }
  m.step();
}

}  // namespace indexcache
