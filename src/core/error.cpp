#include "indexcache/error.h"

namespace indexcache {

void throw_bad_input(const std::string& what, const std::string& why) {
  throw Error(ErrorKind::kBadInput, what, why);
}

void throw_runtime(const std::string& what, const std::string& why) {
  throw Error(ErrorKind::kRuntime, what, why);
}

std::string quote_for_message(std::string_view name) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "'";
  for (unsigned char c : name) {
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out + "'";
}

}  // namespace indexcache
