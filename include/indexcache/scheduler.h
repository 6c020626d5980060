// Continuous batching over a BatchSession: requests wait in a bounded queue (first come, first
// served) and are admitted while the KV pool can reserve pages for their prompt plus max_tokens
// (so a running request never runs out of pages mid-decode, and nothing is ever preempted); every
// step spends a token budget on one decode token of each running request, then prefill chunks of
// admitted ones in arrival order. Each request's tokens reach its sink as they are sampled.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "indexcache/index_plan.h"
#include "indexcache/sampler.h"

namespace indexcache {

class BatchSession;

struct SchedulerOptions {
  int max_step_tokens = 256;  // tokens per step: decode tokens first, then prefill chunks
  int max_running = 16;       // requests holding pages at once
  int max_waiting = 64;       // the queue (>= 1): beyond it submit() refuses
};

struct Request {
  std::vector<int32_t> prompt;
  int max_tokens = 16;            // new tokens at most (>= 1)
  SamplerConfig sampler;
  std::vector<int32_t> stop_ids;  // end-of-sequence ids: reported, then finish "stop"
  int plan = 0;                   // index into BatchSession::plans()
};

enum class FinishReason { kNone, kLength, kStop, kCancelled, kError };
const char* finish_reason_name(FinishReason r);  // "", "length", "stop", "cancelled", "error"

struct RequestEvent {
  std::vector<int32_t> tokens;               // tokens sampled since the last event
  FinishReason finish = FinishReason::kNone;  // set on a request's last event, and only there
  std::string error;                         // why, for kError
  int prompt_tokens = 0, completion_tokens = 0;
};
// Called on the scheduler's thread, in order, never after the last event; must not block.
using EventSink = std::function<void(const RequestEvent&)>;

// Cumulative counts with Prometheus-style buckets (upper bounds, seconds).
struct Histogram {
  std::vector<double> bounds;
  std::vector<int64_t> counts;  // per bound (not cumulative), then one past the last bound
  double sum = 0;
  int64_t count = 0;
  explicit Histogram(std::vector<double> b = {}) : bounds(std::move(b)), counts(bounds.size() + 1, 0) {}
  void add(double v);
};

struct PlanStats {
  int64_t requests = 0;          // finished
  int64_t prompt_tokens = 0;     // prefilled
  int64_t generated_tokens = 0;
  Histogram time_to_first_token, inter_token;  // seconds
};

struct SchedulerStats {
  int running = 0, waiting = 0;
  int64_t pages_used = 0, pages_free = 0, pages_total = 0;
  int64_t steps = 0;
  Histogram step_seconds;
  double indexer_seconds = 0;  // of the profiled steps: time in indexer scores + top-k
  double profiled_seconds = 0; // wall time of the profiled steps (indexer share = ratio)
  std::vector<PlanStats> plans;  // per BatchSession plan
};

class Scheduler {
 public:
  Scheduler(BatchSession& batch, const SchedulerOptions& options = {});
  ~Scheduler();  // stop()

  // Thread-safe. Queues a request; returns its id. Throws Error(kBadInput) for an empty prompt,
  // a token id outside the vocabulary, max_tokens < 1, an unknown plan, a bad sampler setting, or
  // prompt + max_tokens past the model's context or the whole pool; Error(kRuntime) only for
  // "queue full" (max_waiting wait already) and "shutting down" (after drain() or stop()).
  int64_t submit(Request request, EventSink sink);
  // Thread-safe. Finishes the request with kCancelled and frees its pages (at the next step
  // boundary); unknown or finished ids are ignored.
  void cancel(int64_t id);
  // Thread-safe: stats as of the last step boundary.
  SchedulerStats stats() const;
  // Thread-safe BatchSession::add_plan (waits for the step in flight); stats() gets its entry.
  int add_plan(const IndexPlan& plan);

  // Runs steps on a thread of its own until stop().
  void start();
  // Stops accepting requests and waits until every queued and running request has finished.
  void drain();
  // Cancels whatever is left and joins the thread.
  void stop();
  // One step on the caller's thread (tests; not while start()ed): false when there was nothing
  // to do.
  bool step();
  // Profile one step in `every` (0: never) to measure the indexer's share of step time (a
  // profiled step synchronises after every op).
  void set_profile_every(int every);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace indexcache
