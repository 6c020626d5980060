// Tokenizer: ids and text identical to HF `tokenizers` on the golden cases
// (tests/data/tokenizer/cases.jsonl, made by scripts/make_tokenizer_goldens.py), round trips,
// special tokens, chat framing, hostile input and malformed tokenizer.json files.
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "indexcache/error.h"
#include "indexcache/tokenizer.h"
#include "io/tokenizer_regex.h"
#include "io/tokenizer_text.h"
#include "test_util.h"

namespace indexcache {
namespace {

using nlohmann::json;

struct TokenizerDir {
  std::string name;  // the "tokenizer" field of its cases
  std::string dir;   // holds tokenizer.json
  bool round_trip;   // decode(encode(text)) == text for every text (byte-level, nothing removed)
};

// Every tokenizer with golden cases. To add one (e.g. the embedded model's), add its line here and
// re-run scripts/make_tokenizer_goldens.py with --extra NAME=DIR.
const std::vector<TokenizerDir>& tokenizer_dirs() {
  static const std::string d = test::test_data_dir() + "/tokenizer/";
  static const std::vector<TokenizerDir> dirs = {
      {"deepseek_style", d + "deepseek_style", true}, {"glm_style", d + "glm_style", true},
      {"gpt2_style", d + "gpt2_style", false},      // prefix space, lstrip / rstrip tokens
      {"splits_style", d + "splits_style", false},  // Removed splits drop text
      {"unk_style", d + "unk_style", false},        // no decoder, unk
      {"dsa-mini", test::test_data_dir() + "/../../models/dsa-mini", true},  // the embedded model
  };
  return dirs;
}

struct Case {
  std::string tokenizer, text, decoded, decoded_skip, decoded_half;
  std::vector<int32_t> ids, ids_special;
  std::vector<std::string> tokens;
};

struct Goldens {
  json meta;
  std::vector<Case> cases;
};

const Goldens& goldens() {
  static const Goldens g = [] {
    Goldens g;
    std::ifstream in(test::test_data_dir() + "/tokenizer/cases.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      json j = json::parse(line);
      if (j.contains("meta")) {
        g.meta = j["meta"];
        continue;
      }
      Case c;
      c.tokenizer = j.at("tokenizer");
      c.text = j.at("text");
      c.ids = j.at("ids").get<std::vector<int32_t>>();
      c.ids_special = j.at("ids_special").get<std::vector<int32_t>>();
      c.tokens = j.at("tokens").get<std::vector<std::string>>();
      c.decoded = j.at("decoded");
      c.decoded_skip = j.at("decoded_skip");
      c.decoded_half = j.at("decoded_half");
      g.cases.push_back(std::move(c));
    }
    return g;
  }();
  return g;
}

const Tokenizer& tokenizer(const std::string& name) {
  static std::map<std::string, Tokenizer> loaded;
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  auto it = loaded.find(name);
  if (it == loaded.end()) {
    for (const TokenizerDir& d : tokenizer_dirs()) {
      if (d.name == name) {
        it = loaded.emplace(name, Tokenizer::load(d.dir + "/tokenizer.json")).first;
        break;
      }
    }
  }
  if (it == loaded.end()) throw std::runtime_error("no tokenizer dir listed for " + name);
  return it->second;
}

const TokenizerDir& dir_of(const std::string& name) {
  for (const TokenizerDir& d : tokenizer_dirs()) {
    if (d.name == name) return d;
  }
  throw std::runtime_error("no tokenizer dir listed for " + name);
}

// Printable form of a text for failure messages.
std::string show(const std::string& s) { return json(s).dump(); }

std::string show_tokens(const Tokenizer& t, const std::vector<int32_t>& ids) {
  std::string out;
  for (int32_t id : ids)
    out += std::to_string(id) + ":" + show(t.token_text(id).value_or("?")) + " ";
  return out;
}

// ---- Goldens ------------------------------------------------------------------------------------

TEST(TokenizerGolden, FixturesCoverEveryListedTokenizer) {
  const Goldens& g = goldens();
  ASSERT_TRUE(g.meta.contains("tokenizers")) << "cases.jsonl has no meta line";
  std::map<std::string, int> count;
  for (const Case& c : g.cases) ++count[c.tokenizer];
  for (const TokenizerDir& d : tokenizer_dirs()) {
    EXPECT_GE(count[d.name], 10) << d.name << " has too few golden cases";
  }
  for (const auto& [name, n] : count) {
    EXPECT_NO_THROW(dir_of(name)) << "cases for " << name << " but no directory listed";
  }
  EXPECT_GE(count["deepseek_style"], 40);
  EXPECT_GE(count["glm_style"], 40);
}

TEST(TokenizerGolden, EncodeMatchesHf) {
  int checked = 0;
  for (const Case& c : goldens().cases) {
    const Tokenizer& t = tokenizer(c.tokenizer);
    const std::vector<int32_t> ids = t.encode(c.text);
    EXPECT_EQ(ids, c.ids) << c.tokenizer << " " << show(c.text)
                          << "\n got:  " << show_tokens(t, ids)
                          << "\n want: " << show_tokens(t, c.ids);
    EXPECT_EQ(t.encode(c.text, /*add_special=*/true), c.ids_special)
        << c.tokenizer << " " << show(c.text);
    ++checked;
  }
  EXPECT_GT(checked, 100);
}

TEST(TokenizerGolden, TokenTextsMatchHf) {
  for (const Case& c : goldens().cases) {
    const Tokenizer& t = tokenizer(c.tokenizer);
    ASSERT_EQ(c.ids.size(), c.tokens.size());
    for (size_t i = 0; i < c.ids.size(); ++i) {
      // HF reports an lstrip / rstrip added token with the white space it swallowed.
      std::string want = c.tokens[i];
      if (t.token_text(c.ids[i]) != want) {
        want.erase(0, want.find_first_not_of(" \t\n"));
        want.erase(want.find_last_not_of(" \t\n") + 1);
      }
      EXPECT_EQ(t.token_text(c.ids[i]), want) << c.tokenizer << " id " << c.ids[i];
      EXPECT_EQ(t.token_id(want), c.ids[i]) << c.tokenizer << " " << show(want);
    }
  }
}

TEST(TokenizerGolden, DecodeMatchesHf) {
  for (const Case& c : goldens().cases) {
    const Tokenizer& t = tokenizer(c.tokenizer);
    EXPECT_EQ(t.decode(c.ids), c.decoded) << c.tokenizer << " " << show(c.text);
    EXPECT_EQ(t.decode(c.ids_special, /*skip_special=*/true), c.decoded_skip)
        << c.tokenizer << " " << show(c.text);
    const std::vector<int32_t> half(c.ids.begin(), c.ids.begin() + c.ids.size() / 2);
    EXPECT_EQ(t.decode(half), c.decoded_half) << c.tokenizer << " " << show(c.text);
  }
}

TEST(TokenizerGolden, RoundTrip) {
  int checked = 0;
  for (const Case& c : goldens().cases) {
    if (!dir_of(c.tokenizer).round_trip) continue;
    const Tokenizer& t = tokenizer(c.tokenizer);
    EXPECT_EQ(t.decode(t.encode(c.text)), c.text) << c.tokenizer;
    ++checked;
  }
  EXPECT_GE(checked, 80);
}

// ---- Special tokens, vocabulary, chat framing ------------------------------------------------

TEST(Tokenizer, SpecialTokensDeepseek) {
  const Tokenizer& t = tokenizer("deepseek_style");
  EXPECT_EQ(t.vocab_size(), 2006);
  const auto bos = t.token_id("<｜begin▁of▁sentence｜>");
  const auto eos = t.token_id("<｜end▁of▁sentence｜>");
  const auto think = t.token_id("<think>");
  ASSERT_TRUE(bos && eos && think);
  EXPECT_EQ(*bos, 2000);
  EXPECT_TRUE(t.is_special(*bos));
  EXPECT_FALSE(t.is_special(*think));  // added, not special
  EXPECT_FALSE(t.is_special(t.token_id("Ġthe").value()));
  EXPECT_FALSE(t.token_id("no such token"));
  EXPECT_FALSE(t.token_text(-1));
  EXPECT_FALSE(t.token_text(t.vocab_size()));

  const std::string text = "<｜begin▁of▁sentence｜>Hi<think>x</think><｜end▁of▁sentence｜>";
  const auto ids = t.encode(text);
  ASSERT_GE(ids.size(), 5u);
  EXPECT_EQ(ids.front(), *bos);
  EXPECT_EQ(ids.back(), *eos);
  EXPECT_EQ(t.decode(ids), text);
  EXPECT_EQ(t.decode(ids, /*skip_special=*/true), "Hi<think>x</think>");
  // add_special prepends BOS (TemplateProcessing "<bos> $A").
  const auto with_bos = t.encode("Hi", true);
  ASSERT_EQ(with_bos.size(), t.encode("Hi").size() + 1);
  EXPECT_EQ(with_bos.front(), *bos);
  EXPECT_EQ(t.encode("", true), std::vector<int32_t>{*bos});
  EXPECT_TRUE(t.encode("").empty());
}

TEST(Tokenizer, SpecialTokensGlm) {
  const Tokenizer& t = tokenizer("glm_style");
  EXPECT_EQ(t.vocab_size(), 2010);
  const auto gmask = t.token_id("[gMASK]"), sop = t.token_id("<sop>");
  ASSERT_TRUE(gmask && sop);
  // Sequence[ByteLevel, TemplateProcessing "[gMASK] <sop> $A"].
  const auto ids = t.encode("hello", true);
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids[0], *gmask);
  EXPECT_EQ(ids[1], *sop);
  EXPECT_EQ(t.decode(ids, true), "hello");
  EXPECT_EQ(t.decode(ids), "[gMASK]<sop>hello");
}

TEST(Tokenizer, WrapChatMatchesGoldenChatPrompts) {
  EXPECT_EQ(wrap_chat("Hi", ChatFormat{.begin = "<a>", .assistant = "</a>"}), "<a>Hi</a>");
  // A conversation: the markers by role, the reply closed, the generation prompt when asked.
  const ChatFormat f{.begin = "B", .system = "S:", .user = "U:", .assistant = "A:", .end_assistant = "."};
  const ChatMessage chat[] = {{"system", "be brief"}, {"user", "hi"}, {"assistant", "hello"}, {"user", "bye"}};
  EXPECT_EQ(render_chat(chat, f, true), "BS:be briefU:hiA:hello.U:byeA:");
  EXPECT_EQ(render_chat(chat, f, false), "BS:be briefU:hiA:hello.U:bye");
  const ChatMessage bad[] = {{"tool", "x"}};
  EXPECT_THROW(render_chat(bad, f, false), Error);
  EXPECT_EQ(wrap_chat("Hi", ChatFormat::glm()), "[gMASK]<sop><|user|>\nHi<|assistant|>\n");
  EXPECT_EQ(wrap_chat("Hi", ChatFormat::deepseek_v3()), "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜>");
  const std::string q = "What is 17 * 24?";
  const std::string glm = wrap_chat(q, ChatFormat::glm());
  EXPECT_EQ(glm, "[gMASK]<sop><|user|>\n" + q + "<|assistant|>\n");
  const std::string ds = wrap_chat(q, ChatFormat::deepseek_v3());
  EXPECT_EQ(ds, "<｜begin▁of▁sentence｜><｜User｜>" + q + "<｜Assistant｜>");
  int found = 0;
  for (const Case& c : goldens().cases) {
    if ((c.tokenizer == "glm_style" && c.text == glm) ||
        (c.tokenizer == "deepseek_style" && c.text == ds)) {
      const Tokenizer& t = tokenizer(c.tokenizer);
      EXPECT_EQ(t.encode(c.text), c.ids);
      // The framing's specials are single tokens.
      EXPECT_TRUE(t.is_special(c.ids.front()));
      EXPECT_TRUE(t.is_special(c.ids.back()) || c.tokenizer == "glm_style");
      ++found;
    }
  }
  EXPECT_EQ(found, 2);
}

TEST(Tokenizer, DecodeSkipsUnknownIdsAndRepairsCutCharacters) {
  const Tokenizer& t = tokenizer("deepseek_style");
  const auto ids = t.encode("héllo 😀");
  std::vector<int32_t> with_junk = {-5, t.vocab_size(), 1 << 30};
  with_junk.insert(with_junk.end(), ids.begin(), ids.end());
  EXPECT_EQ(t.decode(with_junk), "héllo 😀");
  // The emoji is four byte-level tokens here (not in the training text): cutting them gives one
  // U+FFFD for the incomplete sequence.
  const auto emoji = t.encode("😀");
  ASSERT_EQ(emoji.size(), 4u) << show_tokens(t, emoji);
  EXPECT_EQ(t.decode(std::vector<int32_t>(emoji.begin(), emoji.begin() + 3)), "\xEF\xBF\xBD");
  EXPECT_EQ(t.decode(std::vector<int32_t>(emoji.begin() + 1, emoji.end())),
            "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
}

json deepseek_json();

TEST(Tokenizer, AddedTokenIdsAreAssignedAsHfDoes) {
  // HF ignores the "id" written for an added token: a token already in the vocab keeps its
  // vocab id, a new one takes the next id after the highest (checked with tokenizers 0.23.3:
  // <new> -> 2006, Ġthe -> its vocab id, <x> -> 2007).
  json j = deepseek_json();
  auto added = [](int id, const std::string& content, bool special) {
    return json{{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
                {"rstrip", false}, {"normalized", false}, {"special", special}};
  };
  j["added_tokens"].push_back(added(5000, "<new>", true));
  j["added_tokens"].push_back(added(7, "Ġthe", false));
  j["added_tokens"].push_back(added(9, "<x>", false));
  const Tokenizer t = Tokenizer::from_json(j.dump(), "ids.json");
  const Tokenizer& base = tokenizer("deepseek_style");
  EXPECT_EQ(t.token_id("<new>"), 2006);
  EXPECT_EQ(t.token_id("<x>"), 2007);
  EXPECT_EQ(t.token_id("Ġthe"), base.token_id("Ġthe"));
  EXPECT_EQ(t.token_text(9), base.token_text(9));
  EXPECT_EQ(t.vocab_size(), 2008);
  std::vector<int32_t> want = base.encode("a");
  want.push_back(2006);
  for (int32_t id : base.encode("b the")) want.push_back(id);
  want.push_back(2007);
  EXPECT_EQ(t.encode("a<new>b the<x>"), want);
}

TEST(Tokenizer, SparseIdsAreFine) {
  const json j = {{"model",
                   {{"type", "BPE"},
                    {"vocab", {{"a", 0}, {"b", 2147483000}, {"ab", 7}}},
                    {"merges", json::array({"a b"})}}},
                  {"decoder", {{"type", "ByteLevel"}}}};
  const Tokenizer t = Tokenizer::from_json(j.dump(), "sparse.json");
  EXPECT_EQ(t.vocab_size(), 2147483001);
  EXPECT_EQ(t.encode("abba"), (std::vector<int32_t>{7, 2147483000, 0}));
  EXPECT_EQ(t.decode(std::vector<int32_t>{7, 5, 2147483000}), "abb");
}

// ---- Hostile input ------------------------------------------------------------------------------

TEST(Tokenizer, InvalidUtf8IsRejectedWithItsOffset) {
  const Tokenizer& t = tokenizer("glm_style");
  const std::vector<std::pair<std::string, size_t>> bad = {
      {"\xff", 0},
      {"abc\xc3", 3},                 // truncated 2-byte sequence at the end
      {"ab\xc3(", 2},                 // bad continuation
      {"x\xc0\xaf", 1},               // overlong '/'
      {"ok \xe0\x80\xaf", 3},         // overlong 3-byte
      {"\xed\xa0\x80 surrogate", 0},  // UTF-16 surrogate
      {"hi\xf4\x90\x80\x80", 2},      // above U+10FFFF
      {"caf\xc3\xa9 \x80", 6},        // stray continuation after valid text
      {"<|user|>\xfe", 8},            // after an added token
  };
  for (const auto& [text, offset] : bad) {
    try {
      t.encode(text);
      ADD_FAILURE() << "no error for " << show(text);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
      EXPECT_EQ(std::string(e.what()), "prompt: invalid UTF-8 at byte " + std::to_string(offset));
    }
  }
}

TEST(Tokenizer, LongAndRepetitiveInputs) {
  for (const char* name : {"deepseek_style", "glm_style"}) {
    const Tokenizer& t = tokenizer(name);
    for (const std::string& text : {std::string(200000, ' '), std::string(100000, '\n') + "x",
                                    std::string(50000, 'a'), std::string(30000, '7'), [] {
                                      std::string s;
                                      for (int i = 0; i < 3000; ++i) s += "word 中文 😀 \t\r\n 123 ";
                                      return s;
                                    }()}) {
      const auto ids = t.encode(text);
      EXPECT_FALSE(ids.empty());
      EXPECT_EQ(t.decode(ids), text) << name;
    }
  }
}

TEST(Tokenizer, ConcurrentEncodeMatchesSerial) {
  const Tokenizer& t = tokenizer("deepseek_style");
  std::vector<std::string> texts;
  for (const Case& c : goldens().cases) {
    if (c.tokenizer == "deepseek_style") texts.push_back(c.text);
  }
  std::vector<std::vector<int32_t>> want;
  for (const auto& s : texts) want.push_back(t.encode(s));
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&] {
      for (int rep = 0; rep < 20; ++rep) {
        for (size_t i = 0; i < texts.size(); ++i) {
          if (t.encode(texts[i]) != want[i]) ++mismatches;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// ---- Malformed tokenizer.json -------------------------------------------------------------------

json deepseek_json() {
  static const json j = json::parse(
      test::read_file(test::test_data_dir() + "/tokenizer/deepseek_style/tokenizer.json"));
  return j;
}

// Loads `j` and returns the error message, or "" if it loaded.
std::string load_error(const json& j) {
  try {
    Tokenizer::from_json(j.dump(), "bad.json");
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput) << e.what();
    return e.what();
  }
  return "";
}

TEST(TokenizerErrors, MissingFileAndInvalidJson) {
  const std::string dir = test::make_temp_dir("tok");
  try {
    Tokenizer::load(dir + "/absent.json");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(e.what()).find(dir + "/absent.json: cannot open"), std::string::npos)
        << e.what();
  }
  const std::string path = dir + "/tokenizer.json";
  test::write_file(path, "{\"model\": {\"type\": \"BPE\", \"vocab\": {");  // truncated
  try {
    Tokenizer::load(path);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
    EXPECT_EQ(std::string(e.what()).rfind(path + ": invalid JSON", 0), 0u) << e.what();
  }
  EXPECT_EQ(load_error(json::array()),
            "bad.json: key '(root)': expected a JSON object, got an array");
}

TEST(TokenizerErrors, ModelAndVocab) {
  json j = deepseek_json();
  j.erase("model");
  EXPECT_EQ(load_error(j), "bad.json: key 'model': missing");

  j = deepseek_json();
  j["model"].erase("vocab");
  EXPECT_EQ(load_error(j), "bad.json: key 'model.vocab': missing");

  j = deepseek_json();
  j["model"]["type"] = "WordPiece";
  EXPECT_EQ(load_error(j),
            "bad.json: key 'model.type': unsupported model type 'WordPiece' (only BPE is "
            "supported)");

  j = deepseek_json();
  j["model"]["vocab"]["Ġthe"] = -3;
  EXPECT_EQ(load_error(j), "bad.json: key 'model.vocab.\\xc4\\xa0the': token id -3 out of range");

  j = deepseek_json();
  j["model"]["vocab"]["Ġthe"] = "x";
  EXPECT_EQ(load_error(j),
            "bad.json: key 'model.vocab.\\xc4\\xa0the': expected a token id (integer), got string");

  j = deepseek_json();
  j["model"]["vocab"]["brand-new"] = 0;  // id 0 is taken
  EXPECT_NE(load_error(j).find("id 0 already belongs to"), std::string::npos);

  j = deepseek_json();
  j["model"]["byte_fallback"] = true;
  EXPECT_EQ(load_error(j), "bad.json: key 'model.byte_fallback': byte_fallback is not supported");

  j = deepseek_json();
  j["model"]["unk_token"] = "<nope>";
  EXPECT_EQ(load_error(j), "bad.json: key 'model.unk_token': '<nope>' is not in the vocab");
}

TEST(TokenizerErrors, Merges) {
  json j = deepseek_json();
  j["model"]["merges"][5] = "Ġ zzzunknown";
  EXPECT_EQ(load_error(j), "bad.json: key 'model.merges[5]': refers to unknown token 'zzzunknown'");

  j = deepseek_json();
  j["model"]["merges"][7] = json::array({"qqq", "Ġ"});
  EXPECT_EQ(load_error(j), "bad.json: key 'model.merges[7]': refers to unknown token 'qqq'");

  j = deepseek_json();
  j["model"]["merges"][0] = "a b c";
  EXPECT_EQ(load_error(j),
            "bad.json: key 'model.merges[0]': expected \"left right\" (one space), got 'a b c'");

  j = deepseek_json();
  j["model"]["merges"][0] = 17;
  EXPECT_EQ(load_error(j),
            "bad.json: key 'model.merges[0]': expected \"left right\" or [left, right], got 17");

  j = deepseek_json();
  j["model"]["merges"].push_back("Q Z");  // both in the vocab, "QZ" is not
  EXPECT_NE(load_error(j).find("merged token 'QZ' is not in the vocab"), std::string::npos);

  j = deepseek_json();
  j["model"]["merges"] = "nope";
  EXPECT_EQ(load_error(j), "bad.json: key 'model.merges': expected an array, got string");
}

TEST(TokenizerErrors, PipelineComponents) {
  json j = deepseek_json();
  j["pre_tokenizer"]["pretokenizers"][2]["pattern"]["Regex"] = "([a-z]+";
  const std::string err = load_error(j);
  EXPECT_EQ(err.rfind("bad.json: key 'pre_tokenizer.pretokenizers[2].pattern.Regex': invalid "
                      "regex: ",
                      0),
            0u)
      << err;

  j = deepseek_json();
  j["pre_tokenizer"]["pretokenizers"][1]["pattern"]["Regex"] = "[a-z&&[^aeiou]]+";
  EXPECT_EQ(load_error(j),
            "bad.json: key 'pre_tokenizer.pretokenizers[1].pattern.Regex': invalid regex: class "
            "intersection (&&) at offset 4 is not supported");

  j = deepseek_json();
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Sideways";
  EXPECT_EQ(load_error(j),
            "bad.json: key 'pre_tokenizer.pretokenizers[0].behavior': unknown behavior "
            "'Sideways'");

  j = deepseek_json();
  j["pre_tokenizer"] = {{"type", "Metaspace"}};
  EXPECT_EQ(load_error(j),
            "bad.json: key 'pre_tokenizer.type': unsupported pre-tokenizer 'Metaspace' "
            "(supported: Sequence, Split, ByteLevel, Digits)");

  j = deepseek_json();
  j["normalizer"] = {{"type", "NFC"}};
  EXPECT_EQ(load_error(j),
            "bad.json: key 'normalizer.type': unsupported normalizer 'NFC' (only none, or an "
            "empty Sequence, is supported)");

  j = deepseek_json();
  j["normalizer"]["normalizers"] = json::array({{{"type", "NFKC"}}});
  EXPECT_NE(load_error(j).find("key 'normalizer.normalizers[0].type'"), std::string::npos);

  j = deepseek_json();
  j["decoder"] = {{"type", "WordPiece"}};
  EXPECT_EQ(load_error(j),
            "bad.json: key 'decoder.type': unsupported decoder 'WordPiece' (only ByteLevel)");

  j = deepseek_json();
  j["post_processor"]["single"][0]["SpecialToken"]["id"] = "<missing>";
  EXPECT_EQ(load_error(j),
            "bad.json: key 'post_processor.single[0].SpecialToken.id': '<missing>' is not in "
            "special_tokens");

  j = deepseek_json();
  j["added_tokens"][0]["content"] = 5;
  EXPECT_EQ(load_error(j),
            "bad.json: key 'added_tokens[0].content': expected a string, got "
            "a number");

  j = deepseek_json();
  j["added_tokens"][1]["special"] = "yes";
  EXPECT_EQ(load_error(j),
            "bad.json: key 'added_tokens[1].special': expected true or false, got string");
}

TEST(TokenizerErrors, UnmodifiedFixtureLoads) { EXPECT_EQ(load_error(deepseek_json()), ""); }

// ---- Internals
// ------------------------------------------------------------------------------------

TEST(TokenizerText, Utf8LossyReplacesMaximalSubparts) {
  using tok::utf8_lossy;
  EXPECT_EQ(utf8_lossy("plain"), "plain");
  EXPECT_EQ(utf8_lossy("\xF0\x9F\x98"), "\xEF\xBF\xBD");              // cut 4-byte: one
  EXPECT_EQ(utf8_lossy("\xE0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");      // E0 80: two
  EXPECT_EQ(utf8_lossy("a\x80\x80z"), "a\xEF\xBF\xBD\xEF\xBF\xBDz");  // stray continuations
  EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(utf8_lossy("\xC3\xA9\xC3"), "\xC3\xA9\xEF\xBF\xBD");
  EXPECT_EQ(tok::find_invalid_utf8("\xF0\x9F\x98\x80 ok"), tok::kValidUtf8);
}

TEST(TokenizerText, ByteLevelMapIsGpt2s) {
  const auto& m = tok::ByteLevelMap::get();
  EXPECT_EQ(m.encode(' '), "Ġ");
  EXPECT_EQ(m.encode('\n'), "Ċ");
  EXPECT_EQ(m.encode('\t'), "ĉ");
  EXPECT_EQ(m.encode('A'), "A");
  EXPECT_EQ(m.encode(0xAD), "Ń");  // the soft hyphen is not printable
  EXPECT_EQ(m.encode(0xFF), "ÿ");
  std::set<std::string> distinct;
  for (int b = 0; b < 256; ++b) {
    distinct.insert(m.encode(static_cast<uint8_t>(b)));
    size_t i = 0;
    EXPECT_EQ(m.decode(tok::next_code_point(m.encode(static_cast<uint8_t>(b)), i)), b);
  }
  EXPECT_EQ(distinct.size(), 256u);
  EXPECT_EQ(m.decode(U'€'), -1);
}

// The matches of `onig_pattern` in `subject`, as byte ranges.
std::vector<std::pair<size_t, size_t>> matches(const std::string& onig_pattern,
                                               const std::string& subject) {
  tok::Regex re(tok::onig_to_pcre2(onig_pattern));
  std::vector<std::pair<size_t, size_t>> m;
  re.find_all(subject, m);
  return m;
}

TEST(TokenizerRegex, OnigurumaEscapesAreTranslated) {
  using tok::onig_to_pcre2;
  using Spans = std::vector<std::pair<size_t, size_t>>;
  EXPECT_EQ(onig_to_pcre2(R"(\s+(?!\S))"), R"([\p{White_Space}]+(?![^\p{White_Space}]))");
  EXPECT_EQ(onig_to_pcre2(R"([^\s\p{Han}])"), R"([^\p{White_Space}\p{Han}])");
  EXPECT_EQ(onig_to_pcre2(R"([]\s][[:alpha:]\s]\\s\h)"),
            R"([]\p{White_Space}][[:alpha:]\p{White_Space}]\\s[0-9a-fA-F])");
  EXPECT_EQ(onig_to_pcre2(R"([\S\P{L}]\[x\])"), R"([\S\P{L}]\[x\])");  // left as they are

  EXPECT_EQ(onig_to_pcre2(R"([\u4e00-\u9fa5]\u00e9\u12)"), R"([\x{4e00}-\x{9fa5}]\x{00e9}\u12)");
  EXPECT_EQ(matches(R"([\u4e00-\u9fa5]+)", "ab中文c"), (Spans{{2, 8}}));

  // U+180E is not white space for Oniguruma (nor Unicode), though PCRE2's \s includes it.
  EXPECT_EQ(matches(R"(\s+)", "a\u180Eb \u3000\u0085c"), (Spans{{5, 11}}));
  // Oniguruma's \w takes marks and every number outside a class; inside, not No (½).
  EXPECT_EQ(matches(R"(\w+)", "a\u0301½Ⅳ‿ x"), (Spans{{0, 11}, {12, 13}}));
  EXPECT_EQ(matches(R"([\w]+)", "a½b"), (Spans{{0, 1}, {3, 4}}));
  // \h is a hex digit.
  EXPECT_EQ(matches(R"(\h+)", "xbeefz 1"), (Spans{{1, 5}, {7, 8}}));
}

TEST(TokenizerRegex, CategoriesKnowNewerUnicode) {
  using Spans = std::vector<std::pair<size_t, size_t>>;
  // U+1FAE8 SHAKING FACE (Unicode 15, So) and U+31350 (CJK Extension H, Unicode 15, Lo) are
  // unassigned in PCRE2 10.42's tables.
  const std::string face = "\U0001FAE8", ext_h = "\U00031350";
  EXPECT_EQ(matches(R"(\p{So}+)", "a" + face + "b"), (Spans{{1, 5}}));
  EXPECT_EQ(matches(R"([\p{P}\p{S}]+)", " " + face + "_"), (Spans{{1, 6}}));
  EXPECT_EQ(matches(R"(\p{L}+)", ext_h + "x"), (Spans{{0, 5}}));
  EXPECT_EQ(matches(R"(\P{L}+)", ext_h + "1"), (Spans{{4, 5}}));
  EXPECT_EQ(matches(R"([^\s\p{L}\p{N}]+)", ext_h + "!"), (Spans{{4, 5}}));
  EXPECT_EQ(matches(R"(\p{^L})", ext_h), Spans{});
  // A new emoji before punctuation and a letter splits as in HF (DeepSeek-V3's pattern).
  const Tokenizer& t = tokenizer("deepseek_style");
  const auto ids = t.encode(face + "_D");
  ASSERT_EQ(ids.size(), 6u) << show_tokens(t, ids);  // 4 bytes + "_" + "D"
  EXPECT_EQ(t.token_text(ids[4]), "_");
  EXPECT_EQ(t.token_text(ids[5]), "D");
}

TEST(TokenizerRegex, EmptyMatchesFollowOnigurumaIteration) {
  tok::Regex re("x*");
  std::vector<std::pair<size_t, size_t>> m;
  re.find_all("abxxc", m);
  const std::vector<std::pair<size_t, size_t>> want = {{0, 0}, {1, 1}, {2, 4}, {5, 5}};
  EXPECT_EQ(m, want);
}

}  // namespace
}  // namespace indexcache
