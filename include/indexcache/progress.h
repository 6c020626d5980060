// The toolkit's one status facility: progress and notes on stderr (or any FILE*). On a terminal,
// update() rewrites one line in place; otherwise it prints at most one plain line per
// plain_interval_s. note() always prints a line. Every line starts with `prefix`; out == nullptr
// prints nothing (--quiet).
#pragma once

#include <cstddef>
#include <cstdio>
#include <string>

namespace indexcache {

class Progress {
 public:
  explicit Progress(std::FILE* out = stderr, double plain_interval_s = 10.0, std::string prefix = {});
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  void update(const std::string& line);
  void note(const std::string& line);
  void done();  // ends a pending terminal line
  bool tty() const { return tty_; }

 private:
  std::FILE* out_;
  bool tty_;
  double interval_;
  std::string prefix_;
  double last_plain_ = -1e300;
  size_t shown_ = 0;  // length of the line on screen (terminal)
};

}  // namespace indexcache
