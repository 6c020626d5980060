// tokenizer.json loading and the encode / decode pipelines. The order of the steps, and every
// rule that decides a token boundary, follows HF `tokenizers` (the goldens in
// tests/data/tokenizer pin it):
//   1. added tokens are cut out of the text: first those with normalized=false, then (in the
//      remaining pieces) those with normalized=true; leftmost match first, longest at a position;
//   2. each remaining piece runs through the pre-tokenizer steps in order, each one splitting
//      every piece further (Split / Digits) or rewriting it (ByteLevel: optional prefix space,
//      optional GPT-2 split, then bytes -> characters);
//   3. each resulting word goes through BPE;
//   4. add_special wraps the ids with the post-processor's special tokens.
#include "indexcache/tokenizer.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstring>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "core/json_input.h"
#include "core/mapped_file.h"
#include "indexcache/error.h"
#include "io/tokenizer_bpe.h"
#include "io/tokenizer_regex.h"
#include "io/tokenizer_text.h"

namespace indexcache {

namespace {

using nlohmann::json;
using tok::BpeModel;
using tok::ByteLevelMap;
using tok::Regex;
using tok::TokenMap;

// The pattern ByteLevel(use_regex=true) splits with (GPT-2's).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ---- JSON access with key paths in errors ---------------------------------------------------

class Reader {
 public:
  explicit Reader(const std::string& source) : source_(path_for_message(source)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    throw_bad_input(source_ + ": key " + quote_for_message(key), why);
  }

  // The member `k` of `obj`, or nullptr when absent or null.
  static const json* find(const json& obj, const char* k) {
    auto it = obj.find(k);
    if (it == obj.end() || it->is_null()) return nullptr;
    return &*it;
  }

  const json& require(const json& obj, const std::string& path, const char* k) const {
    const json* v = find(obj, k);
    if (!v) fail(join(path, k), "missing");
    return *v;
  }

  const json& require_object(const json& obj, const std::string& path, const char* k) const {
    const json& v = require(obj, path, k);
    if (!v.is_object()) fail(join(path, k), "expected an object, got " + type_of(v));
    return v;
  }

  bool get_bool(const json& obj, const std::string& path, const char* k, bool dflt) const {
    const json* v = find(obj, k);
    if (!v) return dflt;
    if (!v->is_boolean()) fail(join(path, k), "expected true or false, got " + type_of(*v));
    return v->get<bool>();
  }

  std::string get_string(const json& obj, const std::string& path, const char* k) const {
    const json& v = require(obj, path, k);
    if (!v.is_string()) fail(join(path, k), "expected a string, got " + type_of(v));
    return v.get<std::string>();
  }

  std::optional<std::string> get_optional_string(const json& obj, const std::string& path,
                                                 const char* k) const {
    const json* v = find(obj, k);
    if (!v) return std::nullopt;
    if (!v->is_string()) fail(join(path, k), "expected a string, got " + type_of(*v));
    return v->get<std::string>();
  }

  int32_t get_id(const json& v, const std::string& key) const {
    if (!v.is_number_integer()) fail(key, "expected a token id (integer), got " + type_of(v));
    if (v.is_number_unsigned() && v.get<uint64_t>() > INT32_MAX) {
      fail(key, "token id " + json_for_message(v) + " out of range");
    }
    const int64_t x = v.get<int64_t>();
    if (x < 0 || x > INT32_MAX) fail(key, "token id " + std::to_string(x) + " out of range");
    return static_cast<int32_t>(x);
  }

  static std::string join(const std::string& path, const std::string& k) {
    return path.empty() ? k : path + "." + k;
  }

  static std::string type_of(const json& v) {
    std::string t = v.type_name();
    return t == "number" ? "a number" : t == "array" ? "an array" : t == "object" ? "an object" : t;
  }

 private:
  std::string source_;
};

std::string quote(std::string_view s) { return quote_for_message(s); }

// A Sequence inside a Sequence inside ...: real files nest one or two; deeper is refused before
// the recursion goes on (the JSON's own nesting is bounded by parse_json_input).
constexpr int kMaxSequenceDepth = 8;

void check_sequence_depth(const Reader& r, const std::string& path, int depth) {
  if (depth >= kMaxSequenceDepth)
    r.fail(path, "Sequence nested deeper than " + std::to_string(kMaxSequenceDepth) + " levels");
}

// ---- Added tokens ---------------------------------------------------------------------------

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// The word characters of HF's single_word check (Rust regex \w: Alphabetic, M, Nd, Pc,
// Join_Control). L and Nl (inside Alphabetic) are named too so that the translation adds the
// letters of newer Unicode versions.
const Regex& word_char_regex() {
  static const Regex re(
      tok::onig_to_pcre2(R"(\A[\p{Alphabetic}\p{L}\p{Nl}\p{M}\p{Nd}\p{Pc}\p{Join_Control}]\z)"));
  return re;
}

size_t prev_char_start(std::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  return word_char_regex().search(s.substr(prev_char_start(s, s.size())));
}

bool starts_with_word(std::string_view s) {
  if (s.empty()) return false;
  return word_char_regex().search(s.substr(0, tok::utf8_len(static_cast<unsigned char>(s[0]))));
}

// Start of the run of white space that ends `s`.
size_t trailing_space_start(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t start = prev_char_start(s, end), i = start;
    if (!is_white_space(tok::next_code_point(s, i))) break;
    end = start;
  }
  return end;
}

// Length of the run of white space that starts `s`.
size_t leading_space_len(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    if (!is_white_space(tok::next_code_point(s, j))) break;
    i = j;
  }
  return i;
}

// A set of added tokens matched leftmost-first, longest at a position (a byte trie).
class AddedMatcher {
 public:
  void add(const std::string& content, int32_t id) {
    first_[static_cast<unsigned char>(content[0])] = true;
    int node = 0;
    for (char ch : content) {
      const uint64_t key = (static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(ch);
      auto it = edges_.find(key);
      if (it == edges_.end()) {
        terminal_.push_back(-1);
        it = edges_.emplace(key, static_cast<int>(terminal_.size()) - 1).first;
      }
      node = it->second;
    }
    if (terminal_[node] < 0) terminal_[node] = id;  // the first of duplicate contents wins
  }
  bool empty() const { return terminal_.size() == 1; }

  // The first match at or after `from`: its id and [start, end), or -1.
  int32_t find(std::string_view s, size_t from, size_t& start, size_t& end) const {
    for (size_t i = from; i < s.size(); ++i) {
      if (!first_[static_cast<unsigned char>(s[i])]) continue;
      int node = 0;
      int32_t best = -1;
      for (size_t j = i; j < s.size(); ++j) {
        const uint64_t key = (static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(s[j]);
        auto it = edges_.find(key);
        if (it == edges_.end()) break;
        node = it->second;
        if (terminal_[node] >= 0) {
          best = terminal_[node];
          end = j + 1;
        }
      }
      if (best >= 0) {
        start = i;
        return best;
      }
    }
    return -1;
  }

 private:
  std::unordered_map<uint64_t, int> edges_;
  std::vector<int32_t> terminal_{-1};
  std::array<bool, 256> first_{};  // bytes that start some token
};

// A piece of the input: text still to tokenize, or an added token already found (id >= 0).
struct Piece {
  std::string_view text;
  int32_t id = -1;
};

// Cuts `text` at the matches of `matcher`, with HF's single_word / lstrip / rstrip rules.
void split_added(std::string_view text, const AddedMatcher& matcher,
                 const std::unordered_map<int32_t, AddedToken>& tokens, std::vector<Piece>& out) {
  size_t start_offset = 0, pos = 0, start = 0, end = 0;
  for (int32_t id; (id = matcher.find(text, pos, start, end)) >= 0;) {
    pos = end;
    const AddedToken* t = &tokens.at(id);
    if (t->single_word) {
      const bool space_before = start == 0 || !ends_with_word(text.substr(0, start));
      const bool space_after = end == text.size() || !starts_with_word(text.substr(end));
      if (!space_before || !space_after) continue;
    }
    if (t->lstrip) start = std::max(trailing_space_start(text.substr(0, start)), start_offset);
    if (t->rstrip) end += leading_space_len(text.substr(end));
    if (start_offset < start) out.push_back({text.substr(start_offset, start - start_offset)});
    out.push_back({text.substr(start, end - start), t->id});
    start_offset = end;
  }
  if (start_offset < text.size()) out.push_back({text.substr(start_offset)});
}

// ---- Pre-tokenizer --------------------------------------------------------------------------

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreTokStep {
  enum class Kind { kSplit, kByteLevel } kind = Kind::kSplit;
  // kSplit (and Digits): the pattern (nullptr: a literal "" that never matches).
  std::shared_ptr<const Regex> regex;
  Behavior behavior = Behavior::kIsolated;
  bool invert = false;
  // kByteLevel
  bool add_prefix_space = false;
  bool use_regex = false;
};

// Applies a Split to one piece and appends the resulting non-empty pieces.
void apply_split(const PreTokStep& step, const std::string& piece, std::vector<std::string>& out,
                 std::vector<std::pair<size_t, size_t>>& scratch) {
  struct Span {
    size_t begin, end;
    bool flag;  // is a match (after invert); for kRemoved: to be removed
  };
  std::vector<Span> spans;
  if (piece.empty()) {
    spans.push_back({0, 0, false});
  } else {
    scratch.clear();
    if (step.regex) step.regex->find_all(piece, scratch);
    size_t prev = 0;
    for (auto [s, e] : scratch) {
      if (prev != s) spans.push_back({prev, s, false});
      spans.push_back({s, e, true});
      prev = e;
    }
    if (prev != piece.size()) spans.push_back({prev, piece.size(), false});
  }
  if (step.invert) {
    for (Span& sp : spans) sp.flag = !sp.flag;
  }

  std::vector<Span> result;
  switch (step.behavior) {
    case Behavior::kRemoved:
      result = std::move(spans);
      break;
    case Behavior::kIsolated:
      for (const Span& sp : spans) result.push_back({sp.begin, sp.end, false});
      break;
    case Behavior::kMergedWithPrevious: {
      bool prev_match = false;
      for (const Span& sp : spans) {
        if (sp.flag && !prev_match && !result.empty()) {
          result.back().end = sp.end;
        } else {
          result.push_back({sp.begin, sp.end, false});
        }
        prev_match = sp.flag;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool prev_match = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->flag && !prev_match && !result.empty()) {
          result.back().begin = it->begin;
        } else {
          result.push_back({it->begin, it->end, false});
        }
        prev_match = it->flag;
      }
      std::reverse(result.begin(), result.end());
      break;
    }
    case Behavior::kContiguous: {
      bool prev_match = false;
      for (const Span& sp : spans) {
        if (sp.flag == prev_match && !result.empty()) {
          result.back().end = sp.end;
        } else {
          result.push_back({sp.begin, sp.end, false});
        }
        prev_match = sp.flag;
      }
      break;
    }
  }
  for (const Span& sp : result) {
    if (!sp.flag && sp.end > sp.begin) out.push_back(piece.substr(sp.begin, sp.end - sp.begin));
  }
}

// ---- Post-processor and decoder ---------------------------------------------------------------

struct PostProcessor {
  std::vector<int32_t> prefix;
  std::vector<int32_t> suffix;
};

enum class DecoderKind { kNone, kByteLevel };

// Escapes `literal` for use as a PCRE2 pattern.
std::string escape_literal(std::string_view literal) {
  std::string out;
  for (char ch : literal) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x80 && !std::isalnum(c)) out += '\\';
    out += ch;
  }
  return out;
}

}  // namespace

// ---- Impl -------------------------------------------------------------------------------------

struct Tokenizer::Impl {
  std::unique_ptr<BpeModel> model;
  std::unordered_map<int32_t, std::string> id_to_token;  // sparse: a file may leave gaps
  int32_t max_id = -1;
  std::vector<AddedToken> added;  // by file order, exact duplicates dropped
  TokenMap added_by_content;
  std::unordered_map<int32_t, AddedToken> added_by_id;
  int64_t max_added_id = -1;
  std::unordered_set<std::string> special_contents;
  AddedMatcher raw_matcher;         // added tokens with normalized = false
  AddedMatcher normalized_matcher;  // added tokens with normalized = true
  std::vector<PreTokStep> pre_tokenizer;
  PostProcessor post;
  DecoderKind decoder = DecoderKind::kNone;

  void parse(const json& root, const Reader& r);
  void parse_model(const json& root, const Reader& r);
  void parse_added_tokens(const json& root, const Reader& r);
  void parse_normalizer(const json& n, const Reader& r, const std::string& path, int depth = 0);
  void parse_pre_tokenizer(const json& p, const Reader& r, const std::string& path, int depth = 0);
  void parse_post_processor(const json& p, const Reader& r, const std::string& path, int depth = 0);
  void parse_decoder(const json& d, const Reader& r, const std::string& path, int depth = 0);
  void set_token(int32_t id, const std::string& text);

  void pre_tokenize_and_encode(std::string_view text, std::vector<int32_t>& out) const;
};

void Tokenizer::Impl::set_token(int32_t id, const std::string& text) {
  id_to_token[id] = text;
  max_id = std::max(max_id, id);
}

void Tokenizer::Impl::parse(const json& root, const Reader& r) {
  if (!root.is_object()) r.fail("(root)", "expected a JSON object, got " + Reader::type_of(root));
  parse_model(root, r);
  parse_added_tokens(root, r);
  if (const json* n = Reader::find(root, "normalizer")) parse_normalizer(*n, r, "normalizer");
  if (const json* p = Reader::find(root, "pre_tokenizer")) {
    parse_pre_tokenizer(*p, r, "pre_tokenizer");
  }
  if (const json* p = Reader::find(root, "post_processor")) {
    parse_post_processor(*p, r, "post_processor");
  }
  if (const json* d = Reader::find(root, "decoder")) parse_decoder(*d, r, "decoder");
}

void Tokenizer::Impl::parse_model(const json& root, const Reader& r) {
  const json& m = r.require_object(root, "", "model");
  auto type = r.get_optional_string(m, "model", "type");
  if (!type) {
    // Old files omit the type; HF then recognises BPE by its merges.
    if (!Reader::find(m, "merges")) r.fail("model.type", "missing");
    type = "BPE";
  }
  if (*type != "BPE") {
    r.fail("model.type", "unsupported model type " + quote(*type) + " (only BPE is supported)");
  }
  if (r.get_bool(m, "model", "byte_fallback", false)) {
    r.fail("model.byte_fallback", "byte_fallback is not supported");
  }
  if (const json* d = Reader::find(m, "dropout")) {
    if (!d->is_number()) r.fail("model.dropout", "expected a number, got " + Reader::type_of(*d));
    if (d->get<double>() != 0.0) r.fail("model.dropout", "BPE dropout is not supported");
  }
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    auto v = r.get_optional_string(m, "model", k);
    if (v && !v->empty()) r.fail(std::string("model.") + k, "not supported (must be null)");
  }

  const json& vocab = r.require_object(m, "model", "vocab");
  TokenMap tokens;
  tokens.reserve(vocab.size());
  id_to_token.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const int32_t id = r.get_id(it.value(), "model.vocab." + it.key());
    if (auto prev = id_to_token.find(id); prev != id_to_token.end()) {
      r.fail("model.vocab." + it.key(),
             "id " + std::to_string(id) + " already belongs to " + quote(prev->second));
    }
    tokens.emplace(it.key(), id);
    set_token(id, it.key());
  }

  const json& merges_json = r.require(m, "model", "merges");
  if (!merges_json.is_array()) {
    r.fail("model.merges", "expected an array, got " + Reader::type_of(merges_json));
  }
  std::vector<BpeModel::Merge> merges;
  merges.reserve(merges_json.size());
  for (size_t i = 0; i < merges_json.size(); ++i) {
    const json& e = merges_json[i];
    const std::string key = "model.merges[" + std::to_string(i) + "]";
    std::string a, b;
    if (e.is_string()) {
      const std::string s = e.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        r.fail(key, "expected \"left right\" (one space), got " + quote(s));
      }
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      r.fail(key, "expected \"left right\" or [left, right], got " + json_for_message(e));
    }
    auto ia = tokens.find(a), ib = tokens.find(b), ir = tokens.find(a + b);
    if (ia == tokens.end()) r.fail(key, "refers to unknown token " + quote(a));
    if (ib == tokens.end()) r.fail(key, "refers to unknown token " + quote(b));
    if (ir == tokens.end()) r.fail(key, "merged token " + quote(a + b) + " is not in the vocab");
    merges.push_back({ia->second, ib->second, ir->second});
  }

  BpeModel::Options opt;
  opt.ignore_merges = r.get_bool(m, "model", "ignore_merges", false);
  opt.fuse_unk = r.get_bool(m, "model", "fuse_unk", false);
  if (auto unk = r.get_optional_string(m, "model", "unk_token")) {
    auto it = tokens.find(*unk);
    if (it == tokens.end()) r.fail("model.unk_token", quote(*unk) + " is not in the vocab");
    opt.unk_id = it->second;
  }
  model = std::make_unique<BpeModel>(std::move(tokens), merges, opt);
}

void Tokenizer::Impl::parse_added_tokens(const json& root, const Reader& r) {
  const json* list = Reader::find(root, "added_tokens");
  if (!list) return;
  if (!list->is_array()) r.fail("added_tokens", "expected an array, got " + Reader::type_of(*list));
  std::vector<AddedToken> tokens;
  tokens.reserve(list->size());
  for (size_t i = 0; i < list->size(); ++i) {
    const json& e = (*list)[i];
    const std::string path = "added_tokens[" + std::to_string(i) + "]";
    if (!e.is_object()) r.fail(path, "expected an object, got " + Reader::type_of(e));
    AddedToken t;
    t.id = r.get_id(r.require(e, path, "id"), path + ".id");
    t.content = r.get_string(e, path, "content");
    t.special = r.get_bool(e, path, "special", false);
    t.single_word = r.get_bool(e, path, "single_word", false);
    t.lstrip = r.get_bool(e, path, "lstrip", false);
    t.rstrip = r.get_bool(e, path, "rstrip", false);
    t.normalized = r.get_bool(e, path, "normalized", true);
    tokens.push_back(std::move(t));
  }

  // Ids are assigned the way HF `tokenizers` assigns them on load (the "id" in the file is only
  // checked by HF, with a warning): a token already in the vocab keeps its vocab id; a new one
  // gets max(vocab count, highest added id + 1). For consistent files both agree.
  const auto model_size = static_cast<int64_t>(model->vocab().size());
  for (AddedToken& t : tokens) {
    if (t.content.empty()) continue;
    const bool duplicate = std::any_of(added.begin(), added.end(), [&](const AddedToken& o) {
      return o.content == t.content && o.single_word == t.single_word && o.lstrip == t.lstrip &&
             o.rstrip == t.rstrip && o.normalized == t.normalized && o.special == t.special;
    });
    if (duplicate) continue;
    int64_t id;
    if (auto it = added_by_content.find(t.content); it != added_by_content.end()) {
      id = it->second;
    } else if (auto v = model->vocab().find(t.content); v != model->vocab().end()) {
      id = v->second;
    } else if (max_added_id < 0) {
      id = model_size;
    } else {
      id = (max_added_id >= model_size || model_size == 0) ? max_added_id + 1 : model_size;
    }
    if (id > INT32_MAX) r.fail("added_tokens", "too many tokens");
    t.id = static_cast<int32_t>(id);
    max_added_id = std::max<int64_t>(max_added_id, id);
    added_by_content[t.content] = t.id;
    added.push_back(t);
  }
  // Flags come from the last definition of each id.
  for (const AddedToken& t : added) added_by_id[t.id] = t;
  for (const AddedToken& t : added) {
    set_token(t.id, t.content);
    if (t.special) special_contents.insert(t.content);
  }
  for (const AddedToken& t : added) {
    if (t.special) (t.normalized ? normalized_matcher : raw_matcher).add(t.content, t.id);
  }
  for (const AddedToken& t : added) {
    if (!special_contents.count(t.content)) {
      (t.normalized ? normalized_matcher : raw_matcher).add(t.content, t.id);
    }
  }
}

void Tokenizer::Impl::parse_normalizer(const json& n, const Reader& r, const std::string& path, int depth) {
  if (!n.is_object()) r.fail(path, "expected an object, got " + Reader::type_of(n));
  const std::string type = r.get_string(n, path, "type");
  if (type == "Sequence") {
    check_sequence_depth(r, path, depth);
    const json& list = r.require(n, path, "normalizers");
    if (!list.is_array()) r.fail(path + ".normalizers", "expected an array");
    for (size_t i = 0; i < list.size(); ++i) {
      parse_normalizer(list[i], r, path + ".normalizers[" + std::to_string(i) + "]", depth + 1);
    }
    return;
  }
  r.fail(path + ".type", "unsupported normalizer " + quote(type) +
                             " (only none, or an empty Sequence, is supported)");
}

void Tokenizer::Impl::parse_pre_tokenizer(const json& p, const Reader& r, const std::string& path,
                                          int depth) {
  if (!p.is_object()) r.fail(path, "expected an object, got " + Reader::type_of(p));
  const std::string type = r.get_string(p, path, "type");
  if (type == "Sequence") {
    check_sequence_depth(r, path, depth);
    const json& list = r.require(p, path, "pretokenizers");
    if (!list.is_array()) r.fail(path + ".pretokenizers", "expected an array");
    for (size_t i = 0; i < list.size(); ++i) {
      parse_pre_tokenizer(list[i], r, path + ".pretokenizers[" + std::to_string(i) + "]", depth + 1);
    }
    return;
  }
  PreTokStep step;
  if (type == "Split") {
    const json& pat = r.require_object(p, path, "pattern");
    std::string pattern;
    if (const json* re = Reader::find(pat, "Regex")) {
      if (!re->is_string()) r.fail(path + ".pattern.Regex", "expected a string");
      try {
        step.regex = std::make_shared<Regex>(tok::onig_to_pcre2(re->get<std::string>()));
      } catch (const tok::RegexError& e) {
        r.fail(path + ".pattern.Regex", std::string("invalid regex: ") + e.what());
      }
    } else if (const json* lit = Reader::find(pat, "String")) {
      if (!lit->is_string()) r.fail(path + ".pattern.String", "expected a string");
      if (!lit->get<std::string>().empty()) {
        step.regex = std::make_shared<Regex>(escape_literal(lit->get<std::string>()));
      }
    } else {
      r.fail(path + ".pattern", "expected {\"Regex\": ...} or {\"String\": ...}");
    }
    const std::string b = r.get_string(p, path, "behavior");
    if (b == "Removed") {
      step.behavior = Behavior::kRemoved;
    } else if (b == "Isolated") {
      step.behavior = Behavior::kIsolated;
    } else if (b == "MergedWithPrevious") {
      step.behavior = Behavior::kMergedWithPrevious;
    } else if (b == "MergedWithNext") {
      step.behavior = Behavior::kMergedWithNext;
    } else if (b == "Contiguous") {
      step.behavior = Behavior::kContiguous;
    } else {
      r.fail(path + ".behavior", "unknown behavior " + quote(b));
    }
    step.invert = r.get_bool(p, path, "invert", false);
  } else if (type == "Digits") {
    // Rust's char::is_numeric: the N categories.
    static const auto digits = std::make_shared<Regex>(tok::onig_to_pcre2(R"(\p{N})"));
    step.regex = digits;
    step.behavior = r.get_bool(p, path, "individual_digits", false) ? Behavior::kIsolated
                                                                    : Behavior::kContiguous;
  } else if (type == "ByteLevel") {
    step.kind = PreTokStep::Kind::kByteLevel;
    step.add_prefix_space = r.get_bool(p, path, "add_prefix_space", true);
    step.use_regex = r.get_bool(p, path, "use_regex", true);
    if (step.use_regex) {
      static const auto gpt2 = std::make_shared<Regex>(tok::onig_to_pcre2(kGpt2Pattern));
      step.regex = gpt2;
    }
  } else {
    r.fail(path + ".type", "unsupported pre-tokenizer " + quote(type) +
                               " (supported: Sequence, Split, ByteLevel, Digits)");
  }
  pre_tokenizer.push_back(std::move(step));
}

void Tokenizer::Impl::parse_post_processor(const json& p, const Reader& r, const std::string& path,
                                           int depth) {
  if (!p.is_object()) r.fail(path, "expected an object, got " + Reader::type_of(p));
  const std::string type = r.get_string(p, path, "type");
  auto wrap = [&](const std::vector<int32_t>& pre, const std::vector<int32_t>& suf) {
    post.prefix.insert(post.prefix.begin(), pre.begin(), pre.end());
    post.suffix.insert(post.suffix.end(), suf.begin(), suf.end());
  };
  if (type == "Sequence") {
    check_sequence_depth(r, path, depth);
    const json& list = r.require(p, path, "processors");
    if (!list.is_array()) r.fail(path + ".processors", "expected an array");
    for (size_t i = 0; i < list.size(); ++i) {
      parse_post_processor(list[i], r, path + ".processors[" + std::to_string(i) + "]", depth + 1);
    }
  } else if (type == "ByteLevel") {
    // Only adjusts offsets.
  } else if (type == "TemplateProcessing") {
    const json& single = r.require(p, path, "single");
    const json& specials = r.require(p, path, "special_tokens");
    if (!single.is_array()) r.fail(path + ".single", "expected an array");
    if (!specials.is_object()) r.fail(path + ".special_tokens", "expected an object");
    std::vector<int32_t> pre, suf;
    bool seen_a = false;
    for (size_t i = 0; i < single.size(); ++i) {
      const std::string key = path + ".single[" + std::to_string(i) + "]";
      const json& item = single[i];
      if (!item.is_object()) r.fail(key, "expected an object");
      if (const json* st = Reader::find(item, "SpecialToken")) {
        const std::string name = r.get_string(*st, key + ".SpecialToken", "id");
        const json* spec = Reader::find(specials, name.c_str());
        if (!spec || !spec->is_object()) {
          r.fail(key + ".SpecialToken.id", quote(name) + " is not in special_tokens");
        }
        const std::string skey = path + ".special_tokens." + name;
        const json& ids = r.require(*spec, skey, "ids");
        if (!ids.is_array()) r.fail(skey + ".ids", "expected an array");
        for (size_t k = 0; k < ids.size(); ++k) {
          const int32_t id = r.get_id(ids[k], skey + ".ids[" + std::to_string(k) + "]");
          (seen_a ? suf : pre).push_back(id);
        }
      } else if (const json* seq = Reader::find(item, "Sequence")) {
        const std::string id = r.get_string(*seq, key + ".Sequence", "id");
        if (id != "A") r.fail(key + ".Sequence.id", "the single template may only use A");
        seen_a = true;
      } else {
        r.fail(key, "expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
      }
    }
    if (!seen_a) r.fail(path + ".single", "has no Sequence A");
    wrap(pre, suf);
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    auto pair_id = [&](const char* k) {
      const json& v = r.require(p, path, k);
      if (!v.is_array() || v.size() != 2) r.fail(path + "." + k, "expected [token, id]");
      return r.get_id(v[1], path + "." + k + "[1]");
    };
    const int32_t cls = pair_id("cls"), sep = pair_id("sep");
    wrap({cls}, {sep});
  } else {
    r.fail(path + ".type", "unsupported post-processor " + quote(type));
  }
}

void Tokenizer::Impl::parse_decoder(const json& d, const Reader& r, const std::string& path, int depth) {
  if (!d.is_object()) r.fail(path, "expected an object, got " + Reader::type_of(d));
  const std::string type = r.get_string(d, path, "type");
  if (type == "ByteLevel") {
    decoder = DecoderKind::kByteLevel;
  } else if (type == "Sequence") {
    check_sequence_depth(r, path, depth);
    const json& list = r.require(d, path, "decoders");
    if (!list.is_array() || list.size() > 1) {
      r.fail(path + ".decoders", "only a Sequence of at most one ByteLevel decoder is supported");
    }
    for (size_t i = 0; i < list.size(); ++i) {
      parse_decoder(list[i], r, path + ".decoders[" + std::to_string(i) + "]", depth + 1);
    }
  } else {
    r.fail(path + ".type", "unsupported decoder " + quote(type) + " (only ByteLevel)");
  }
}

void Tokenizer::Impl::pre_tokenize_and_encode(std::string_view text,
                                              std::vector<int32_t>& out) const {
  if (text.empty()) return;
  std::vector<std::string> words{std::string(text)}, next;
  std::vector<std::pair<size_t, size_t>> scratch;
  const ByteLevelMap& bytes = ByteLevelMap::get();
  for (const PreTokStep& step : pre_tokenizer) {
    next.clear();
    if (step.kind == PreTokStep::Kind::kSplit) {
      for (const std::string& w : words) apply_split(step, w, next, scratch);
    } else {
      PreTokStep isolated;
      isolated.regex = step.regex;
      std::vector<std::string> split;
      for (std::string& w : words) {
        if (step.add_prefix_space && (w.empty() || w[0] != ' ')) w.insert(0, 1, ' ');
        split.clear();
        if (step.use_regex) {
          apply_split(isolated, w, split, scratch);
        } else if (!w.empty()) {
          split.push_back(std::move(w));
        }
        for (const std::string& s : split) {
          std::string mapped;
          mapped.reserve(s.size() * 2);
          bytes.encode_into(s, mapped);
          next.push_back(std::move(mapped));
        }
      }
    }
    words.swap(next);
  }
  for (const std::string& w : words) model->tokenize(w, out);
}

// ---- Public API -------------------------------------------------------------------------------

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::string& path) { return from_json(read_regular_file(path), path); }

Tokenizer Tokenizer::from_json(std::string_view json_text, const std::string& source) {
  const json root = parse_json_input(json_text, path_for_message(source));
  auto impl = std::make_unique<Impl>();
  impl->parse(root, Reader(source));
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special) const {
  const Impl& im = *impl_;
  if (size_t bad = tok::find_invalid_utf8(text); bad != tok::kValidUtf8) {
    throw_bad_input("prompt", "invalid UTF-8 at byte " + std::to_string(bad));
  }
  std::vector<int32_t> ids;
  if (add_special) ids = im.post.prefix;
  std::vector<Piece> raw, pieces;
  if (im.raw_matcher.empty()) {
    raw.push_back({text});
  } else {
    split_added(text, im.raw_matcher, im.added_by_id, raw);
  }
  for (const Piece& p : raw) {
    if (p.id >= 0 || im.normalized_matcher.empty()) {
      pieces.push_back(p);
    } else {
      split_added(p.text, im.normalized_matcher, im.added_by_id, pieces);
    }
  }
  try {
    for (const Piece& p : pieces) {
      if (p.id >= 0) {
        ids.push_back(p.id);
      } else {
        im.pre_tokenize_and_encode(p.text, ids);
      }
    }
  } catch (const tok::RegexError& e) {
    throw_bad_input("prompt", std::string("pre-tokenizer regex failed: ") + e.what());
  }
  if (add_special) ids.insert(ids.end(), im.post.suffix.begin(), im.post.suffix.end());
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  const Impl& im = *impl_;
  std::vector<const std::string*> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    auto it = im.id_to_token.find(id);
    if (it == im.id_to_token.end()) continue;
    const std::string& t = it->second;
    if (skip_special && im.special_contents.count(t)) continue;
    tokens.push_back(&t);
  }
  std::string out;
  if (im.decoder == DecoderKind::kNone) {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out += ' ';
      out += *tokens[i];
    }
    return out;
  }
  // ByteLevel: a token whose characters all stand for bytes gives those bytes; any other token
  // (e.g. an added token with characters outside the map) gives its own UTF-8.
  const ByteLevelMap& map = ByteLevelMap::get();
  std::string bytes, tok_bytes;
  for (const std::string* t : tokens) {
    tok_bytes.clear();
    bool all_mapped = true;
    for (size_t i = 0; i < t->size();) {
      const int b = map.decode(tok::next_code_point(*t, i));
      if (b < 0) {
        all_mapped = false;
        break;
      }
      tok_bytes += static_cast<char>(b);
    }
    bytes += all_mapped ? tok_bytes : *t;
  }
  return tok::utf8_lossy(bytes);
}

int Tokenizer::vocab_size() const { return impl_->max_id + 1; }

std::optional<int32_t> Tokenizer::token_id(std::string_view token) const {
  if (auto it = impl_->added_by_content.find(token); it != impl_->added_by_content.end()) {
    return it->second;
  }
  if (auto it = impl_->model->vocab().find(token); it != impl_->model->vocab().end()) {
    return it->second;
  }
  return std::nullopt;
}

std::optional<std::string> Tokenizer::token_text(int32_t id) const {
  auto it = impl_->id_to_token.find(id);
  if (it == impl_->id_to_token.end()) return std::nullopt;
  return it->second;
}

bool Tokenizer::is_special(int32_t id) const {
  auto t = token_text(id);
  return t && impl_->special_contents.count(*t) > 0;
}

// ---- Chat framing -------------------------------------------------------------------------------

ChatFormat ChatFormat::glm() {
  return {.begin = "[gMASK]<sop>", .system = "<|system|>\n", .user = "<|user|>\n", .assistant = "<|assistant|>\n",
          .end_assistant = ""};
}

ChatFormat ChatFormat::deepseek_v3() {
  return {.begin = "<｜begin▁of▁sentence｜>", .system = "", .user = "<｜User｜>", .assistant = "<｜Assistant｜>",
          .end_assistant = "<｜end▁of▁sentence｜>"};
}

std::string wrap_chat(std::string_view user_prompt, const ChatFormat& format) {
  const ChatMessage m{"user", user_prompt};
  return render_chat({&m, 1}, format, /*generation_prompt=*/true);
}

std::string render_chat(std::span<const ChatMessage> messages, const ChatFormat& format, bool generation_prompt) {
  std::string out = format.begin;
  for (const ChatMessage& m : messages) {
    if (m.role == "system") {
      out += format.system;
      out += m.content;
    } else if (m.role == "user") {
      out += format.user;
      out += m.content;
    } else if (m.role == "assistant") {
      out += format.assistant;
      out += m.content;
      out += format.end_assistant;
    } else {
      throw_bad_input("chat message", "unknown role " + quote_for_message(m.role) + " (system, user, assistant)");
    }
  }
  if (generation_prompt) out += format.assistant;
  return out;
}

}  // namespace indexcache
