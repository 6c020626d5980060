#include "indexcache/error.h"

namespace indexcache {

void throw_bad_input(const std::string& what, const std::string& why) {
  throw Error(ErrorKind::kBadInput, what, why);
}

void throw_runtime(const std::string& what, const std::string& why) {
  throw Error(ErrorKind::kRuntime, what, why);
}

}  // namespace indexcache
