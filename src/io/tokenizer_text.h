// UTF-8 and byte-level helpers for the tokenizer: validation, the GPT-2 byte <-> character map,
// and lossy decoding of byte strings.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace indexcache::tok {

inline constexpr size_t kValidUtf8 = static_cast<size_t>(-1);

// Offset of the first byte that does not start a well-formed UTF-8 sequence (overlong forms,
// surrogates and code points above U+10FFFF are ill-formed), or kValidUtf8.
size_t find_invalid_utf8(std::string_view s);

// Length of the (valid) UTF-8 sequence starting with `lead`.
inline size_t utf8_len(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

void append_utf8(std::string& out, char32_t cp);

// Decodes the code point at s[i] (s valid UTF-8) and advances i past it.
char32_t next_code_point(std::string_view s, size_t& i);

// `bytes` as UTF-8, each maximal ill-formed subpart replaced by U+FFFD (the rule of Rust's
// String::from_utf8_lossy and of the Unicode standard's "best practice").
std::string utf8_lossy(std::string_view bytes);

// GPT-2's reversible map from bytes to printable characters: the printable Latin-1 bytes
// ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves, the other 68 bytes take U+0100.. in
// byte order (so ' ' is 'Ġ' U+0120, '\n' is 'Ċ' U+010A).
class ByteLevelMap {
 public:
  static const ByteLevelMap& get();
  // UTF-8 of the character standing for `b`.
  const std::string& encode(uint8_t b) const { return to_char_[b]; }
  // The byte a character stands for, or -1 if it stands for none.
  int decode(char32_t c) const { return c < to_byte_.size() ? to_byte_[c] : -1; }
  // Appends the byte-level form of `text` (each byte replaced by its character).
  void encode_into(std::string_view text, std::string& out) const;

 private:
  ByteLevelMap();
  std::array<std::string, 256> to_char_;
  std::array<int16_t, 512> to_byte_;
};

}  // namespace indexcache::tok
