// The tokenizer's regular expressions: PCRE2 (UTF + UCP, JIT when available) behind a small
// interface, so no PCRE2 type leaks out of src/io/tokenizer_regex.cpp.
#pragma once

#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace indexcache::tok {

struct RegexError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Rewrites an Oniguruma pattern (the dialect of HF `tokenizers`' tokenizer.json patterns) for
// PCRE2 where the two differ:
//  - \s / \S: Unicode White_Space (PCRE2's \s adds U+180E);
//  - \w / \W: letters, marks, numbers, connector punctuation (inside a class: without No);
//  - \h / \H: a hex digit (PCRE2: horizontal space);
//  - \p{..} / \P{..} of a general category also match the code points assigned to it after PCRE2's
//    Unicode version, up to HF's (tokenizer_unicode_delta.h), e.g. the emoji of Unicode 15-16.
//  - \uHHHH becomes \x{HHHH}.
// Negated escapes inside a class ([\S..], [\P{L}..]) are left as they are. Throws RegexError for
// Oniguruma's class intersection ([a-z&&[^aeiou]]), which PCRE2 would read differently.
std::string onig_to_pcre2(std::string_view pattern);

class Regex {
 public:
  // Compiles `pattern` as PCRE2 syntax (translate Oniguruma patterns with onig_to_pcre2 first).
  // ^ and $ match at line breaks (\n), as in Oniguruma's Ruby syntax. Throws RegexError with
  // PCRE2's message and offset.
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Every match in `subject` (valid UTF-8, not checked again), in order, as HF's find_iter
  // yields them: a search restarts where the last match ended; an empty match right where the
  // previous match ended is skipped by moving one character on. Throws RegexError if PCRE2
  // gives up (match or stack limits).
  void find_all(std::string_view subject, std::vector<std::pair<size_t, size_t>>& out) const;

  // True if the pattern matches somewhere in `subject`.
  bool search(std::string_view subject) const;

 private:
  struct Code;
  std::unique_ptr<Code> code_;
};

}  // namespace indexcache::tok
