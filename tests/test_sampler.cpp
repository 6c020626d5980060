// Sampling: greedy, top-k, top-p, temperature, seeds, NaN handling and bad settings.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "indexcache/error.h"
#include "indexcache/sampler.h"

namespace indexcache {
namespace {

TEST(Sampler, GreedyIsArgmax) {
  Sampler s({});
  const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 1.9f};
  EXPECT_EQ(s.sample(logits), 1);
}

TEST(Sampler, NanNeverChosen) {
  Sampler s({});
  EXPECT_EQ(s.sample(std::vector<float>{NAN, 1.0f, NAN}), 1);
  Sampler hot({.temperature = 1.0f, .seed = 3});
  for (int i = 0; i < 100; ++i) EXPECT_EQ(hot.sample(std::vector<float>{NAN, 1.0f, NAN}), 1);
  EXPECT_THROW(s.sample(std::vector<float>{NAN, NAN}), Error);
}

TEST(Sampler, TopKOneAndTinyTopPAreGreedy) {
  const std::vector<float> logits = {0.5f, 0.4f, 0.45f};
  Sampler k1({.temperature = 5.0f, .top_k = 1, .seed = 1});
  Sampler p0({.temperature = 5.0f, .top_p = 1e-6f, .seed = 1});
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(k1.sample(logits), 0);
    EXPECT_EQ(p0.sample(logits), 0);
  }
}

TEST(Sampler, TopKLimitsCandidates) {
  const std::vector<float> logits = {3.0f, 2.9f, 2.8f, -50.0f, 2.7f};
  Sampler s({.temperature = 100.0f, .top_k = 2, .seed = 7});
  for (int i = 0; i < 200; ++i) {
    const int t = s.sample(logits);
    EXPECT_TRUE(t == 0 || t == 1) << t;
  }
}

// Two tokens with logits ln 3 and 0 at temperature 1: probabilities 3/4 and 1/4.
TEST(Sampler, TemperatureOneMatchesSoftmax) {
  Sampler s({.temperature = 1.0f, .seed = 42});
  const std::vector<float> logits = {std::log(3.0f), 0.0f};
  int first = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) first += s.sample(logits) == 0;
  EXPECT_NEAR(first / double(n), 0.75, 0.015);
}

TEST(Sampler, SeedReproduces) {
  const std::vector<float> logits = {0.0f, 0.1f, 0.2f, 0.3f, 0.4f};
  Sampler a({.temperature = 1.0f, .seed = 9}), b({.temperature = 1.0f, .seed = 9});
  for (int i = 0; i < 100; ++i) EXPECT_EQ(a.sample(logits), b.sample(logits));
}

TEST(Sampler, BadSettings) {
  EXPECT_THROW(Sampler({.temperature = -1.0f}), Error);
  EXPECT_THROW(Sampler({.temperature = NAN}), Error);
  EXPECT_THROW(Sampler({.top_k = -2}), Error);
  EXPECT_THROW(Sampler({.top_p = 0.0f}), Error);
  EXPECT_THROW(Sampler({.top_p = 1.5f}), Error);
}

}  // namespace
}  // namespace indexcache
