// Fuzzes the data readers (load_data_text: .ids, .txt and .jsonl, chat lines included) with the
// GLM-style golden tokenizer: any input either loads or throws indexcache::Error (bad input).
// Anything else (a crash, a sanitizer report, another exception type) is a finding.
//
// Input: byte 0 picks the kind (% 3: .ids, .txt, .jsonl) and whether a vocabulary limit applies;
// byte 1 is the window length; the rest is the file's contents.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "indexcache/dataset.h"
#include "indexcache/error.h"
#include "indexcache/tokenizer.h"

namespace {
const indexcache::Tokenizer& tokenizer() {
  static const indexcache::Tokenizer tok = indexcache::Tokenizer::load(INDEXCACHE_FUZZ_TOKENIZER);
  return tok;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  static const char* kPaths[] = {"fuzz.ids", "fuzz.txt", "fuzz.jsonl"};
  const std::string path = kPaths[data[0] % 3];
  indexcache::DataOptions o;
  o.ctx = data[1] % 64;  // 0 and 1 are refused (bad input)
  o.max_windows = (data[0] >> 2) & 3;
  o.max_items = (data[0] >> 4) & 1;
  o.vocab_size = (data[0] & 0x80) ? 300 : 0;
  if (data[0] & 0x40) o.chat = indexcache::chat_format_for(indexcache::Family::kGlmMoeDsa);
  const std::string_view text(reinterpret_cast<const char*>(data + 2), size - 2);
  try {
    const indexcache::DataFile f = indexcache::load_data_text(text, path, &tokenizer(), o);
    for (const auto& w : f.windows)
      if (w.size() < 2 || static_cast<int>(w.size()) > o.ctx) __builtin_trap();
    if (o.vocab_size > 0)
      for (const auto& w : f.windows)
        for (int32_t id : w)
          if (id < 0 || id >= o.vocab_size) __builtin_trap();
  } catch (const indexcache::Error& e) {
    if (e.kind() != indexcache::ErrorKind::kBadInput) __builtin_trap();
  }
  return 0;
}
