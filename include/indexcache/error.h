// Errors: one exception type carrying whether the fault is the user's input (exit 2) or a runtime
// failure (exit 1). Messages read `<what>: <why>`; the CLI prefixes `error: `.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace indexcache {

enum class ErrorKind { kBadInput, kRuntime };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& what, const std::string& why)
      : std::runtime_error(what + ": " + why), kind_(kind) {}
  ErrorKind kind() const { return kind_; }
  // Process exit code for this error: 2 for bad input, 1 for runtime failures.
  int exit_code() const { return kind_ == ErrorKind::kBadInput ? 2 : 1; }

 private:
  ErrorKind kind_;
};

// `what` names the file, tensor or key; `why` says what is wrong with it.
[[noreturn]] void throw_bad_input(const std::string& what, const std::string& why);
[[noreturn]] void throw_runtime(const std::string& what, const std::string& why);

// A name quoted for a one-line message: 'name', with control, non-ASCII, quote and backslash bytes
// written as \xNN (file and tensor names in hostile input stay on one line).
std::string quote_for_message(std::string_view name);

}  // namespace indexcache
