#include "indexcache/progress.h"

#include <unistd.h>

#include <chrono>
#include <utility>

namespace indexcache {

namespace {
double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

Progress::Progress(std::FILE* out, double plain_interval_s, std::string prefix)
    : out_(out), tty_(out && isatty(fileno(out)) != 0), interval_(plain_interval_s), prefix_(std::move(prefix)) {}

Progress::~Progress() { done(); }

void Progress::update(const std::string& text) {
  if (!out_) return;
  const std::string line = prefix_ + text;
  if (tty_) {
    std::string shown = "\r" + line;
    if (line.size() < shown_) shown += std::string(shown_ - line.size(), ' ');
    std::fputs(shown.c_str(), out_);
    std::fflush(out_);
    shown_ = line.size();
    return;
  }
  const double t = now_seconds();
  if (t - last_plain_ < interval_) return;
  last_plain_ = t;
  std::fprintf(out_, "%s\n", line.c_str());
  std::fflush(out_);
}

void Progress::note(const std::string& text) {
  if (!out_) return;
  if (tty_ && shown_) {
    std::fprintf(out_, "\r%s\r", std::string(shown_, ' ').c_str());
    shown_ = 0;
  }
  std::fprintf(out_, "%s%s\n", prefix_.c_str(), text.c_str());
  std::fflush(out_);
  if (!tty_) last_plain_ = now_seconds();
}

void Progress::done() {
  if (out_ && tty_ && shown_) {
    std::fprintf(out_, "\r%s\r", std::string(shown_, ' ').c_str());
    std::fflush(out_);
    shown_ = 0;
  }
}

}  // namespace indexcache
