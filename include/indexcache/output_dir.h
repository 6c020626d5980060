// The output directory of a command that writes files (calibrate, overlap): checked and claimed
// before any computation, never mixed with a user's files, every file replaced atomically.
//
// A directory is ours (for a command) when it holds the marker file `.indexcache-output` whose
// first line is "indexcache <command>"; OutputDir::open writes it when it creates or claims the
// directory, so re-running a command (or `calibrate --resume`) on its own directory just works.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace indexcache {

inline constexpr std::string_view kOutputMarker = ".indexcache-output";

struct OutputDirOptions {
  std::string command;        // "calibrate", "overlap": named in the marker and in messages
  bool force = false;         // --force: claim an existing non-empty directory that is not ours
  std::string model_dir;      // never an output directory, not even with force
  // An unmarked directory holding nothing but these plain files is claimed without force (the
  // state file `calibrate --resume` was pointed at).
  std::vector<std::string> adoptable;
};

class OutputDir {
 public:
  // Checks `path` and claims it, before the caller computes anything. kBadInput naming "--out"
  // when: it is empty, "/" or the model directory (force or not); it exists and is not a
  // directory; it cannot be created; a probe file cannot be written and removed there; it holds
  // entries (besides a marker) and is not ours (another command's, or a user's), without force
  // or `adoptable`. Then writes the marker.
  static OutputDir open(const std::string& path, const OutputDirOptions& options);

  const std::string& path() const { return path_; }
  std::string file(std::string_view name) const;  // path()/name
  // Writes `text` to path()/name: write_file_atomic.
  void write(std::string_view name, const std::string& text) const;

 private:
  explicit OutputDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// Writes `text` to `path` through a temporary `.<name>.<pid>.<n>.tmp` in the same directory,
// created with O_EXCL (never a file somebody else owns, e.g. `<name>.tmp`), fsync'ed, renamed
// over `path`, then the directory fsync'ed: a reader (or a crash) sees the old file or the new
// one, never half of one. kRuntime naming `path` when it fails (the temporary is removed).
void write_file_atomic(const std::string& path, const std::string& text);

}  // namespace indexcache
