// The bounded JSON reader every user-supplied JSON file goes through (src/core/json_input.h).
#include "core/json_input.h"

#include <gtest/gtest.h>

#include <string>

#include "indexcache/error.h"

namespace indexcache {
namespace {

std::string error_of(std::string_view text, int max_depth = kMaxJsonInputDepth) {
  try {
    parse_json_input(text, "x.json", max_depth);
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), 2);
    return e.what();
  }
  return "";
}

TEST(JsonInput, NestingDepthCountsBracketsOutsideStrings) {
  EXPECT_EQ(json_nesting_depth("1", 10), 0);
  EXPECT_EQ(json_nesting_depth("[[1],[2,[3]]]", 10), 3);
  EXPECT_EQ(json_nesting_depth(R"({"a":"[[[[","b":{"c":"\"[{"}})", 10), 2);
  // Stops counting once past the limit (a 100 MB "[[[[..." costs no more than the limit).
  EXPECT_EQ(json_nesting_depth(std::string(1000, '['), 5), 6);
}

TEST(JsonInput, AcceptsTheLimitAndRefusesOneMore) {
  const std::string ok = std::string(64, '[') + std::string(64, ']');
  EXPECT_NO_THROW(parse_json_input(ok, "x.json"));
  const std::string deep = std::string(65, '[') + std::string(65, ']');
  EXPECT_EQ(error_of(deep), "x.json: JSON nests deeper than 64 levels");
  // A million levels: refused by the scan, before nlohmann allocates anything.
  EXPECT_EQ(error_of(std::string(1 << 20, '[')), "x.json: JSON nests deeper than 64 levels");
}

TEST(JsonInput, SyntaxErrorsAreOneLineWithTheByte) {
  EXPECT_EQ(error_of("{\"a\": 1,}"), "x.json: invalid JSON (byte 9)");
  EXPECT_EQ(error_of("  \n"), "x.json: empty, expected JSON");
  EXPECT_EQ(error_of("{} trailing"), "x.json: invalid JSON (byte 6)");
}

TEST(JsonInput, IntegersAreRangeCheckedNeverWrapped) {
  using nlohmann::json;
  EXPECT_EQ(json_integer_in(json::parse("12"), 0, 100), 12);
  EXPECT_EQ(json_integer_in(json::parse("-3"), -5, 5), -3);
  EXPECT_EQ(json_integer_in(json::parse("4294967308"), 0, INT32_MAX), std::nullopt);  // 2^32+12
  EXPECT_EQ(json_integer_in(json::parse("18446744073709551615"), 0, INT64_MAX), std::nullopt);
  EXPECT_EQ(json_integer_in(json::parse("-2147483648"), 0, 10), std::nullopt);
  EXPECT_EQ(json_integer_in(json::parse("3.0"), 0, 10), std::nullopt);
  EXPECT_EQ(json_integer_in(json::parse("true"), 0, 10), std::nullopt);
  EXPECT_EQ(json_integer_in(json::parse("\"3\""), 0, 10), std::nullopt);
  EXPECT_EQ(json_integer_in(json::parse("9223372036854775807"), 0, INT64_MAX), INT64_MAX);
}

TEST(JsonInput, ValuesForMessagesAreShortAndEscaped) {
  EXPECT_EQ(json_for_message(nlohmann::json::parse(R"([1,"a"])")), R"([1,"a"])");
  nlohmann::json big = nlohmann::json::array();
  for (int i = 0; i < 100000; ++i) big.push_back(i);
  const std::string shown = json_for_message(big, 20);
  EXPECT_EQ(shown, "[0,1,2,3,4,5,6,7,8,9...");
  // A newline or escape byte in a string value never reaches the message raw.
  const std::string s = json_for_message(nlohmann::json(std::string("a\nb\x1b[31m")));
  EXPECT_EQ(s.find('\n'), std::string::npos);
  EXPECT_EQ(s.find('\x1b'), std::string::npos);
  EXPECT_EQ(json_for_message(nlohmann::json(std::string(1000, 'z')), 10), "\"zzzzzzzzz...");
}

}  // namespace
}  // namespace indexcache
