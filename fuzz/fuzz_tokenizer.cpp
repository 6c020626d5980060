// Fuzzes tokenizer.json loading and encoding: the input is a tokenizer.json text, optionally
// followed by a NUL-free line "\n#TEXT#" and a text to encode (without it, a fixed sample text is
// encoded). Any input either loads, encodes and decodes, or throws indexcache::Error (bad input).
// Anything else (a crash, a sanitizer report, another exception type, a timeout) is a bug.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "indexcache/error.h"
#include "indexcache/tokenizer.h"

namespace {

constexpr std::string_view kSeparator = "\n#TEXT#";
constexpr std::string_view kSample = "Hello, world! 12345 <|user|> naïve 中文 \n\t  end";

void check(bool ok) {
  if (!ok) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  std::string_view json = input, text = kSample;
  if (const size_t sep = input.rfind(kSeparator); sep != std::string_view::npos) {
    json = input.substr(0, sep);
    text = input.substr(sep + kSeparator.size());
  }
  try {
    const auto tok = indexcache::Tokenizer::from_json(json, "fuzz");
    const int vocab = tok.vocab_size();
    check(vocab >= 0);
    for (bool add_special : {false, true}) {
      std::vector<int32_t> ids;
      try {
        ids = tok.encode(text, add_special);
      } catch (const indexcache::Error& e) {
        check(e.kind() == indexcache::ErrorKind::kBadInput);  // invalid UTF-8, a regex limit
        continue;
      }
      for (int32_t id : ids) check(id >= 0);
      volatile size_t sink = tok.decode(ids).size() + tok.decode(ids, /*skip_special=*/true).size();
      (void)sink;
    }
    for (int32_t id : {0, 1, vocab - 1, vocab}) {
      if (auto t = tok.token_text(id)) check(tok.token_id(*t).has_value());
      (void)tok.is_special(id);
    }
  } catch (const indexcache::Error& e) {
    check(e.kind() == indexcache::ErrorKind::kBadInput);
  }
  return 0;
}
