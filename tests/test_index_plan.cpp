// IndexPlan: every source of a plan, SGLang's precedence, the freq/offset rule, and bad plans.
#include <gtest/gtest.h>

#include <functional>

#include "indexcache/error.h"
#include "indexcache/index_plan.h"
#include "test_util.h"

namespace indexcache {
namespace {

ModelSpec spec_with_layers(int n) {
  ModelSpec s;
  s.num_layers = n;
  return s;
}

void expect_error(const std::function<void()>& f, const std::vector<std::string>& needles) {
  try {
    f();
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

TEST(IndexPlan, FreqOffsetRule) {
  // GLM-5.2 style freq 4 offset 3: full iff max(i-2, 0) % 4 == 0 -> 0,1,2,6,10.
  EXPECT_EQ(IndexPlan::from_freq(4, 3, 12).pattern(), "FFFSSSFSSSFS");
  // Default offset 2: max(i-1, 0) % 2 == 0 -> 0,1,3,5.
  EXPECT_EQ(IndexPlan::from_freq(2, 2, 6).pattern(), "FFSFSF");
  EXPECT_EQ(IndexPlan::from_freq(1, 2, 3).pattern(), "FFF");
  EXPECT_EQ(IndexPlan::from_freq(0, 2, 3).pattern(), "FFF");  // freq clamped to 1 as transformers
}

TEST(IndexPlan, ConfigPrecedence) {
  ModelSpec s = spec_with_layers(4);
  EXPECT_EQ(IndexPlan::from_config(s).pattern(), "FFFF");
  s.plan_keys.index_topk_freq = 2;
  EXPECT_EQ(IndexPlan::from_config(s).pattern(), "FFSF");  // offset defaults to 2
  s.plan_keys.index_skip_topk_offset = 1;
  EXPECT_EQ(IndexPlan::from_config(s).pattern(), "FSFS");
  s.plan_keys.index_topk_pattern = "FFSS";
  EXPECT_EQ(IndexPlan::from_config(s).pattern(), "FFSS");  // pattern beats freq
  s.plan_keys.indexer_types = std::vector<std::string>{"full", "shared", "full", "shared"};
  EXPECT_EQ(IndexPlan::from_config(s).pattern(), "FSFS");  // indexer_types beats both
}

TEST(IndexPlan, CliSyntax) {
  const ModelSpec s = spec_with_layers(8);
  EXPECT_EQ(IndexPlan::parse("full", s).pattern(), "FFFFFFFF");
  EXPECT_EQ(IndexPlan::parse("1/2", s).pattern(), "FSFSFSFS");
  EXPECT_EQ(IndexPlan::parse("1/4", s).pattern(), "FSSSFSSS");
  EXPECT_EQ(IndexPlan::parse("1/8", s).pattern(), "FSSSSSSS");
  EXPECT_EQ(IndexPlan::parse("FFSSFSSS", s).pattern(), "FFSSFSSS");
  EXPECT_EQ(IndexPlan::parse("1/4", s).num_full(), 2);
}

TEST(IndexPlan, FromFiles) {
  const ModelSpec s = spec_with_layers(4);
  const std::string dir = test::make_temp_dir("plan");
  test::write_file(dir + "/config.json", R"({"indexer_types": ["full", "shared", "shared", "full"]})");
  EXPECT_EQ(IndexPlan::parse(dir + "/config.json", s).pattern(), "FSSF");
  test::write_file(dir + "/report.json", R"({"plan": "FFSS", "steps": []})");
  EXPECT_EQ(IndexPlan::parse(dir + "/report.json", s).pattern(), "FFSS");
  test::write_file(dir + "/freq.json", R"({"index_topk_freq": 2, "index_skip_topk_offset": 1})");
  EXPECT_EQ(IndexPlan::parse(dir + "/freq.json", s).pattern(), "FSFS");
  test::write_file(dir + "/none.json", R"({"hidden_size": 4})");
  expect_error([&] { IndexPlan::parse(dir + "/none.json", s); }, {"none.json", "no plan"});
  test::write_file(dir + "/broken.json", "{");
  expect_error([&] { IndexPlan::parse(dir + "/broken.json", s); }, {"broken.json", "JSON"});
}

TEST(IndexPlan, SourceLayer) {
  const IndexPlan p = IndexPlan::from_pattern("FSSFSF", 6);
  const std::vector<int> want = {0, 0, 0, 3, 3, 5};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(p.source_layer(i), want[i]) << i;
  EXPECT_EQ(p.num_full(), 3);
  EXPECT_EQ(p.indexer_types(), (std::vector<std::string>{"full", "shared", "shared", "full", "shared", "full"}));
}

TEST(IndexPlan, BadPlans) {
  const ModelSpec s = spec_with_layers(4);
  expect_error([&] { IndexPlan::parse("SFFF", s); }, {"SFFF", "layer 0"});
  expect_error([&] { IndexPlan::parse("FFF", s); }, {"3 layers", "4"});
  expect_error([&] { IndexPlan::parse("FFFFF", s); }, {"5 layers"});
  expect_error([&] { IndexPlan::parse("FFxF", s); }, {"'x'", "position 2"});
  expect_error([&] { IndexPlan::parse("1/0", s); }, {"1/0"});
  expect_error([&] { IndexPlan::parse("1/abc", s); }, {"1/abc"});
  expect_error([&] { IndexPlan::parse("", s); }, {"--plan"});
  expect_error([&] { IndexPlan::parse("/no/such/file.json", s); }, {"/no/such/file.json"});
  ModelSpec bad = s;
  bad.plan_keys.indexer_types = std::vector<std::string>{"full", "full", "sparse", "full"};
  expect_error([&] { IndexPlan::from_config(bad); }, {"indexer_types", "sparse", "layer 2"});
  bad.plan_keys.indexer_types = std::vector<std::string>{"full"};
  expect_error([&] { IndexPlan::from_config(bad); }, {"indexer_types", "1 layers"});
}

}  // namespace
}  // namespace indexcache
