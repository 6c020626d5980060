// Continuous batching against single-request generation: every request's tokens equal what
// generate() gives it alone on a Session (greedy and seeded sampling, chunked prefill mixed with
// other requests' decode steps, several plans in one batch), from one thread and from many;
// cancellation, stop ids, page reservation, the queue bound and every bad request.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>

#include "backend/backend.h"
#include "indexcache/batch_session.h"
#include "indexcache/error.h"
#include "indexcache/generate.h"
#include "indexcache/model.h"
#include "indexcache/scheduler.h"
#include "indexcache/session.h"

namespace indexcache {
namespace {

const std::string kModel = std::string(INDEXCACHE_TEST_DATA) + "/../../models/dsa-mini";

// What a sink saw of one request.
struct Seen {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int32_t> tokens;
  FinishReason finish = FinishReason::kNone;
  int events_after_finish = 0;
  int completion_tokens = 0;
  std::string error;
  EventSink sink() {
    return [this](const RequestEvent& e) {
      std::lock_guard lock(mu);
      if (finish != FinishReason::kNone) ++events_after_finish;
      tokens.insert(tokens.end(), e.tokens.begin(), e.tokens.end());
      if (e.finish != FinishReason::kNone) {
        finish = e.finish;
        error = e.error;
        completion_tokens = e.completion_tokens;
        cv.notify_all();
      }
    };
  }
  bool wait(std::chrono::seconds limit) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, limit, [&] { return finish != FinishReason::kNone; });
  }
};

class SchedulerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { model_ = Model::load(kModel).release(); }
  static void TearDownTestSuite() { delete model_; }
  void SetUp() override {
    be_ = make_cpu_backend();
    const int L = model_->spec().num_layers;
    plans_ = {model_->config_plan(), IndexPlan::from_freq(4, 1, L), IndexPlan::full(L)};
  }
  std::vector<int32_t> random_prompt(int n, uint32_t seed) const {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int32_t> d(0, model_->spec().vocab_size - 1);
    std::vector<int32_t> v(n);
    for (int32_t& x : v) x = d(rng);
    return v;
  }
  // The request alone: generate() on its own Session.
  std::vector<int32_t> alone(const Request& r) const {
    Session session(*model_, plans_[r.plan], *be_);
    GenerateOptions go;
    go.max_new_tokens = r.max_tokens;
    go.sampler = r.sampler;
    go.eos_ids.assign(r.stop_ids.begin(), r.stop_ids.end());
    std::vector<int32_t> out;
    generate(session, r.prompt, go, [&](int32_t t) {
      out.push_back(t);
      return true;
    });
    return out;
  }
  std::vector<Request> mixed_requests() const {
    std::vector<Request> rs;
    const int lengths[] = {300, 7, 64, 1, 129, 33};
    for (int i = 0; i < 6; ++i) {
      Request r;
      r.prompt = random_prompt(lengths[i], 40 + i);
      r.max_tokens = 4 + i;
      r.plan = i % 3;
      if (i % 2 == 1) r.sampler = {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .seed = 1000u + i};
      rs.push_back(r);
    }
    return rs;
  }
  static Model* model_;
  std::unique_ptr<Backend> be_;
  std::vector<IndexPlan> plans_;
};
Model* SchedulerTest::model_ = nullptr;

TEST_F(SchedulerTest, EveryRequestGetsWhatItGetsAlone) {
  BatchSession batch(*model_, plans_, *be_, {.page_tokens = 16, .pages = 256});
  // A small budget: prompts are prefilled in chunks beside the other requests' decode tokens.
  Scheduler sched(batch, {.max_step_tokens = 48, .max_running = 4, .max_waiting = 16});
  const std::vector<Request> rs = mixed_requests();
  std::vector<std::unique_ptr<Seen>> seen;
  for (const Request& r : rs) {
    seen.push_back(std::make_unique<Seen>());
    sched.submit(r, seen.back()->sink());
  }
  int steps = 0;
  while (sched.step()) ASSERT_LT(++steps, 1000);
  for (size_t i = 0; i < rs.size(); ++i) {
    EXPECT_EQ(seen[i]->tokens, alone(rs[i])) << "request " << i;
    EXPECT_EQ(seen[i]->finish, FinishReason::kLength);
    EXPECT_EQ(seen[i]->completion_tokens, rs[i].max_tokens);
    EXPECT_EQ(seen[i]->events_after_finish, 0);
  }
  const SchedulerStats st = sched.stats();
  EXPECT_EQ(st.pages_used, 0);
  EXPECT_EQ(st.running + st.waiting, 0);
  int64_t requests = 0, generated = 0, prompt = 0, ttft = 0, itl = 0;
  for (const PlanStats& p : st.plans) {
    requests += p.requests;
    generated += p.generated_tokens;
    prompt += p.prompt_tokens;
    ttft += p.time_to_first_token.count;
    itl += p.inter_token.count;
  }
  EXPECT_EQ(requests, 6);
  EXPECT_EQ(generated, 4 + 5 + 6 + 7 + 8 + 9);
  EXPECT_EQ(prompt, 300 + 7 + 64 + 1 + 129 + 33);
  EXPECT_EQ(ttft, 6);
  EXPECT_EQ(itl, generated - 6);
  EXPECT_EQ(st.plans[0].requests, 2);  // requests 0 and 3 ran the config plan
  // 300 prompt tokens at 48 per step at most: the steps were chunked.
  EXPECT_GE(st.steps, 300 / 48);
}

TEST_F(SchedulerTest, ManyClientThreadsGetWhatTheyGetAlone) {
  BatchSession batch(*model_, plans_, *be_, {.page_tokens = 16, .pages = 256});
  Scheduler sched(batch, {.max_step_tokens = 64, .max_running = 3, .max_waiting = 16});
  sched.set_profile_every(2);
  sched.start();
  const std::vector<Request> rs = mixed_requests();
  std::vector<std::unique_ptr<Seen>> seen(rs.size());
  for (auto& s : seen) s = std::make_unique<Seen>();
  std::vector<std::thread> clients;
  for (size_t i = 0; i < rs.size(); ++i)
    clients.emplace_back([&, i] {
      sched.submit(rs[i], seen[i]->sink());
      seen[i]->wait(std::chrono::seconds(120));
    });
  for (auto& t : clients) t.join();
  sched.drain();
  for (size_t i = 0; i < rs.size(); ++i) {
    ASSERT_EQ(seen[i]->finish, FinishReason::kLength) << "request " << i << " did not finish";
    EXPECT_EQ(seen[i]->tokens, alone(rs[i])) << "request " << i;
  }
  const SchedulerStats st = sched.stats();
  EXPECT_EQ(st.pages_used, 0);
  EXPECT_GT(st.profiled_seconds, 0);
  EXPECT_GT(st.indexer_seconds, 0);  // config and full plans run indexers
  EXPECT_LT(st.indexer_seconds, st.profiled_seconds);
  EXPECT_THROW(sched.submit(rs[0], {}), Error);  // drained: shutting down
}

TEST_F(SchedulerTest, StopIdsEndARequestAtTheirToken) {
  BatchSession batch(*model_, plans_, *be_, {.page_tokens = 16, .pages = 64});
  Scheduler sched(batch);
  Request r;
  r.prompt = random_prompt(20, 5);
  r.max_tokens = 10;
  const std::vector<int32_t> free_run = alone(r);
  r.stop_ids = {free_run[2]};
  const size_t first = std::find(free_run.begin(), free_run.end(), free_run[2]) - free_run.begin();
  Seen seen;
  sched.submit(r, seen.sink());
  while (sched.step()) {
  }
  EXPECT_EQ(seen.finish, FinishReason::kStop);
  EXPECT_EQ(seen.tokens, std::vector<int32_t>(free_run.begin(), free_run.begin() + first + 1));
  EXPECT_EQ(sched.stats().pages_used, 0);
}

TEST_F(SchedulerTest, CancellingFreesPagesAndEndsTheEvents) {
  BatchSession batch(*model_, plans_, *be_, {.page_tokens = 16, .pages = 64});
  Scheduler sched(batch, {.max_step_tokens = 16});
  Request r;
  r.prompt = random_prompt(40, 6);
  r.max_tokens = 50;
  Seen running, queued;
  const int64_t a = sched.submit(r, running.sink());
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(sched.step());  // prefilled (3 steps), then decoding
  EXPECT_GT(sched.stats().pages_used, 0);
  EXPECT_EQ(running.tokens.size(), 3u);
  const int64_t b = sched.submit(r, queued.sink());
  sched.cancel(b);
  sched.cancel(a);
  sched.cancel(12345);  // unknown: ignored
  sched.step();
  EXPECT_EQ(running.finish, FinishReason::kCancelled);
  EXPECT_EQ(queued.finish, FinishReason::kCancelled);
  EXPECT_TRUE(queued.tokens.empty());
  EXPECT_EQ(sched.stats().pages_used, 0);
  EXPECT_EQ(batch.sequences(), 0);
  EXPECT_FALSE(sched.step());
  EXPECT_EQ(running.events_after_finish, 0);
}

TEST_F(SchedulerTest, AdmissionWaitsForReservedPages) {
  // Each request reserves ceil((40 + 30) / 8) = 9 of 12 pages: one runs at a time.
  BatchSession batch(*model_, plans_, *be_, {.page_tokens = 8, .pages = 12});
  Scheduler sched(batch, {.max_running = 4});
  Request r;
  r.max_tokens = 30;
  std::vector<Request> rs;
  std::vector<std::unique_ptr<Seen>> seen;
  for (int i = 0; i < 3; ++i) {
    r.prompt = random_prompt(40, 70 + i);
    rs.push_back(r);
    seen.push_back(std::make_unique<Seen>());
    sched.submit(r, seen.back()->sink());
  }
  int most_running = 0;
  while (sched.step()) most_running = std::max(most_running, sched.stats().running);
  EXPECT_EQ(most_running, 1);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(seen[i]->tokens, alone(rs[i])) << "request " << i;
}

TEST_F(SchedulerTest, TheQueueIsBounded) {
  BatchSession batch(*model_, plans_, *be_, {.page_tokens = 16, .pages = 64});
  Scheduler sched(batch, {.max_waiting = 2});
  Request r;
  r.prompt = random_prompt(5, 8);
  sched.submit(r, {});
  sched.submit(r, {});
  try {
    sched.submit(r, {});
    FAIL() << "a third request was queued";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kRuntime);
    EXPECT_NE(std::string(e.what()).find("queue full"), std::string::npos) << e.what();
  }
  sched.step();  // both admitted: room again
  EXPECT_NO_THROW(sched.submit(r, {}));
}

TEST_F(SchedulerTest, BadRequestsAreRefusedWithTheirReason) {
  BatchSession batch(*model_, plans_, *be_, {.page_tokens = 16, .pages = 8});
  Scheduler sched(batch);
  const ModelSpec& s = model_->spec();
  auto refused = [&](Request r, const std::string& says) {
    try {
      sched.submit(std::move(r), {});
      ADD_FAILURE() << "accepted a request that should fail with: " << says;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kBadInput) << e.what();
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
  };
  Request ok;
  ok.prompt = random_prompt(5, 9);
  Request r = ok;
  r.prompt.clear();
  refused(r, "empty");
  r = ok;
  r.prompt[2] = s.vocab_size;
  refused(r, "outside the vocabulary");
  r = ok;
  r.max_tokens = 0;
  refused(r, "max_tokens");
  r = ok;
  r.max_tokens = s.max_position_embeddings;
  refused(r, "exceed the context");
  r = ok;
  r.max_tokens = 8 * 16;  // 133 tokens: 9 pages of 16, the pool has 8
  refused(r, "KV pages");
  r = ok;
  r.plan = 3;
  refused(r, "no plan 3");
  r = ok;
  r.sampler.temperature = -1;
  refused(r, "temp");
  r = ok;
  r.sampler.top_p = 0;
  refused(r, "top-p");
  EXPECT_FALSE(sched.step());  // nothing was queued
  EXPECT_THROW(Scheduler(batch, {.max_step_tokens = 0}), Error);
  EXPECT_THROW(Scheduler(batch, {.max_waiting = 0}), Error);
}

}  // namespace
}  // namespace indexcache
