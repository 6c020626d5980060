#include "io/tokenizer_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>

#include "io/tokenizer_text.h"
#include "io/tokenizer_unicode_delta.h"

namespace indexcache::tok {

namespace {

constexpr std::string_view kSpaceItems = "\\p{White_Space}";
constexpr std::string_view kHexItems = "0-9a-fA-F";

bool is_general_category(std::string_view name) {
  static constexpr std::string_view kNames[] = {
      "L",  "Lu", "Ll", "Lt", "Lm", "Lo", "M",  "Mn", "Mc", "Me", "N", "Nd",
      "Nl", "No", "P",  "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "S", "Sm",
      "Sc", "Sk", "So", "Z",  "Zs", "Zl", "Zp", "C",  "Cc", "Cf", "Co"};
  for (std::string_view n : kNames) {
    if (n == name) return true;
  }
  return false;
}

// Class items for general category `name`: \p{name} plus the code points assigned to it after
// PCRE2's Unicode version (see tokenizer_unicode_delta.h).
std::string category_items(std::string_view name) {
  std::string out = "\\p{";
  out += name;
  out += '}';
  char buf[32];
  for (const UnicodeDeltaRange& r : kUnicodeDelta) {
    const std::string_view cat(r.category, 2);
    if (cat == name || (name.size() == 1 && cat[0] == name[0])) {
      std::snprintf(buf, sizeof buf, "\\x{%X}-\\x{%X}", static_cast<unsigned>(r.lo),
                    static_cast<unsigned>(r.hi));
      out += buf;
    }
  }
  return out;
}

std::string word_items(bool in_class) {
  // Oniguruma's \w: letters, marks, numbers, connector punctuation; inside a class without No.
  std::string out = category_items("L") + category_items("M");
  out += in_class ? category_items("Nd") + category_items("Nl") : category_items("N");
  out += category_items("Pc");
  return out;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  if (pcre2_get_error_message(code, buf, sizeof buf) < 0) return "error " + std::to_string(code);
  return reinterpret_cast<const char*>(buf);
}

// Per-thread match context with a JIT stack big enough for long whitespace or letter runs.
struct MatchContext {
  pcre2_match_context* ctx = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
  MatchContext() {
    ctx = pcre2_match_context_create(nullptr);
    jit_stack = pcre2_jit_stack_create(64 * 1024, 16 * 1024 * 1024, nullptr);
    if (ctx && jit_stack) pcre2_jit_stack_assign(ctx, nullptr, jit_stack);
  }
  ~MatchContext() {
    if (jit_stack) pcre2_jit_stack_free(jit_stack);
    if (ctx) pcre2_match_context_free(ctx);
  }
};

pcre2_match_context* thread_match_context() {
  thread_local MatchContext mc;
  return mc.ctx;
}

}  // namespace

std::string onig_to_pcre2(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 16);
  bool in_class = false;
  bool class_first = false;  // the next byte is the first item of a class (a ']' there is literal)
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[i + 1];
      class_first = false;
      std::string items;
      bool negated = false;
      size_t consumed = 2;
      switch (e) {
        case 's':
          items = kSpaceItems;
          break;
        case 'S':
          items = kSpaceItems;
          negated = true;
          break;
        case 'w':
          items = word_items(in_class);
          break;
        case 'W':
          items = word_items(false);
          negated = true;
          break;
        case 'h':
          items = kHexItems;
          break;
        case 'H':
          items = kHexItems;
          negated = true;
          break;
        case 'p':
        case 'P': {
          const size_t close = p.find('}', i + 2);
          if (i + 2 < p.size() && p[i + 2] == '{' && close != std::string_view::npos) {
            std::string_view name = p.substr(i + 3, close - i - 3);
            negated = e == 'P';
            if (!name.empty() && name[0] == '^') {
              negated = !negated;
              name.remove_prefix(1);
            }
            if (is_general_category(name)) {
              items = category_items(name);
              consumed = close + 1 - i;
            }
          }
          break;
        }
        case 'u':
          // Oniguruma's \uHHHH; PCRE2 spells it \x{HHHH}.
          if (i + 6 <= p.size() && std::all_of(p.begin() + i + 2, p.begin() + i + 6, [](char h) {
                return std::isxdigit(static_cast<unsigned char>(h));
              })) {
            out += "\\x{";
            out.append(p.substr(i + 2, 4));
            out += '}';
            i += 5;
            continue;
          }
          break;
        default:
          break;
      }
      if (items.empty() || (in_class && negated)) {
        out += c;
        out += e;
        consumed = 2;
      } else if (in_class) {
        out += items;
      } else {
        out += negated ? "[^" : "[";
        out += items;
        out += ']';
      }
      i += consumed - 1;
      continue;
    }
    if (in_class) {
      if (c == '[' && i + 1 < p.size() && p[i + 1] == ':') {
        // POSIX class [:name:]: copy through ":]".
        const size_t end = p.find(":]", i + 2);
        if (end != std::string_view::npos) {
          out.append(p.substr(i, end + 2 - i));
          i = end + 1;
          class_first = false;
          continue;
        }
      }
      if (c == '&' && i + 1 < p.size() && p[i + 1] == '&') {
        // PCRE2 would read these as literal '&'s: refuse rather than match something else.
        throw RegexError("class intersection (&&) at offset " + std::to_string(i) +
                         " is not supported");
      }
      if (c == ']' && !class_first) in_class = false;
      class_first = false;
      out += c;
      continue;
    }
    out += c;
    if (c == '[') {
      in_class = true;
      class_first = true;
      if (i + 1 < p.size() && p[i + 1] == '^') {
        out += '^';
        ++i;
      }
    }
  }
  return out;
}

struct Regex::Code {
  pcre2_code* code = nullptr;
  ~Code() {
    if (code) pcre2_code_free(code);
  }
};

Regex::Regex(const std::string& pattern) : code_(std::make_unique<Code>()) {
  pcre2_compile_context* cc = pcre2_compile_context_create(nullptr);
  if (cc) pcre2_set_newline(cc, PCRE2_NEWLINE_LF);
  int err = 0;
  PCRE2_SIZE offset = 0;
  code_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                              PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &err, &offset, cc);
  if (cc) pcre2_compile_context_free(cc);
  if (!code_->code) {
    throw RegexError(pcre2_message(err) + " at offset " + std::to_string(offset));
  }
  uint32_t has_jit = 0;
  pcre2_config(PCRE2_CONFIG_JIT, &has_jit);
  // A JIT failure (e.g. no executable memory) only costs speed: pcre2_match interprets then.
  if (has_jit) pcre2_jit_compile(code_->code, PCRE2_JIT_COMPLETE);
}

Regex::~Regex() = default;

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_->code, nullptr);
  if (!md) throw RegexError("out of memory");
  pcre2_match_context* mc = thread_match_context();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t last_end = 0;
  bool have_last_match = false;
  size_t last_match_end = 0;
  while (last_end <= s.size()) {
    const int rc =
        pcre2_match(code_->code, subject, s.size(), last_end, PCRE2_NO_UTF_CHECK, md, mc);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      pcre2_match_data_free(md);
      throw RegexError(pcre2_message(rc) + " (searching from byte " + std::to_string(last_end) +
                       ")");
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t start = ov[0], end = ov[1];
    if (start == end && have_last_match && last_match_end == end) {
      // Step over one character and search again.
      if (last_end >= s.size()) break;
      last_end += utf8_len(static_cast<unsigned char>(s[last_end]));
      continue;
    }
    last_end = end;
    have_last_match = true;
    last_match_end = end;
    out.emplace_back(start, end);
  }
  pcre2_match_data_free(md);
}

bool Regex::search(std::string_view s) const {
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_->code, nullptr);
  if (!md) throw RegexError("out of memory");
  const int rc = pcre2_match(code_->code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), 0,
                             PCRE2_NO_UTF_CHECK, md, thread_match_context());
  pcre2_match_data_free(md);
  if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) throw RegexError(pcre2_message(rc));
  return rc >= 0;
}

}  // namespace indexcache::tok
