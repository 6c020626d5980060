#include "indexcache/output_dir.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "indexcache/error.h"

namespace indexcache {

namespace fs = std::filesystem;

namespace {

std::string errno_text(int err) { return std::strerror(err); }

// fd closed on every path out.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  int release() {
    const int f = fd;
    fd = -1;
    return f;
  }
};

// Writes all of `text` to `fd`; 0 or the errno of the failure.
int write_all(int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    done += static_cast<size_t>(n);
  }
  return 0;
}

// Creates a fresh temporary next to `path` with O_EXCL; its name is returned in `tmp`.
int create_temp(const fs::path& path, std::string& tmp, int& err) {
  static std::atomic<unsigned> counter{0};
  const fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string name(1, '.');
    name += path.filename().string();
    name += fmt::format(".{}.{}.tmp", ::getpid(), counter.fetch_add(1));
    tmp = (dir / name).string();
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd >= 0) return fd;
    err = errno;
    if (err != EEXIST) return -1;
  }
  return -1;
}

int fsync_dir(const fs::path& dir) {
  const std::string d = dir.empty() ? "." : dir.string();
  Fd fd{::open(d.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (fd.fd < 0) return errno;
  if (::fsync(fd.fd) != 0 && errno != EINVAL) return errno;  // EINVAL: a file system without fsync
  return 0;
}

// Line 1 of the marker of `dir` ("" when there is none or it is not a plain file).
std::string marker_owner(const fs::path& dir) {
  std::error_code ec;
  const fs::path m = dir / std::string(kOutputMarker);
  if (!fs::is_regular_file(fs::symlink_status(m, ec))) return "";
  Fd fd{::open(m.c_str(), O_RDONLY | O_CLOEXEC)};
  if (fd.fd < 0) return "";
  char buf[128];
  const ssize_t n = ::read(fd.fd, buf, sizeof buf);
  if (n <= 0) return "";
  std::string s(buf, static_cast<size_t>(n));
  return s.substr(0, s.find('\n'));
}

std::string marker_text(const std::string& command) {
  return "indexcache " + command +
         "\nThis directory holds the output of `indexcache " + command +
         "`; the command may replace the files it writes here.\n";
}

bool same_dir(const fs::path& a, const fs::path& b) {
  std::error_code ec;
  const bool eq = fs::equivalent(a, b, ec);
  return !ec && eq;
}

}  // namespace

void write_file_atomic(const std::string& path, const std::string& text) {
  const fs::path p(path);
  std::string tmp;
  int err = 0;
  Fd fd{create_temp(p, tmp, err)};
  if (fd.fd < 0) throw_runtime(path, "cannot write: " + errno_text(err));
  auto fail = [&](const std::string& what, int e) {
    ::close(fd.release());
    ::unlink(tmp.c_str());
    throw_runtime(path, what + ": " + errno_text(e));
  };
  if (const int e = write_all(fd.fd, text)) fail("write failed", e);
  if (::fsync(fd.fd) != 0 && errno != EINVAL) fail("fsync failed", errno);
  if (::close(fd.release()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    throw_runtime(path, "write failed: " + errno_text(e));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    throw_runtime(path, "cannot replace: " + errno_text(e));
  }
  if (const int e = fsync_dir(p.parent_path())) throw_runtime(path, "fsync of the directory failed: " + errno_text(e));
}

OutputDir OutputDir::open(const std::string& path, const OutputDirOptions& o) {
  const std::string what = "--out " + quote_for_message(path);
  const std::string mine = "indexcache " + o.command;
  if (path.empty()) throw_bad_input("--out", "empty directory name");
  std::error_code ec;
  const fs::path dir(path);
  const fs::path canon = fs::weakly_canonical(fs::absolute(dir, ec), ec);
  if (!ec && canon == canon.root_path())
    throw_bad_input(what, "refusing to write into the root directory (give a directory of its own)");
  if (!o.model_dir.empty() && same_dir(dir, o.model_dir))
    throw_bad_input(what, "is the model directory; refusing to write into it (give a directory of its own)");

  const fs::file_status st = fs::status(dir, ec);
  const bool existed = fs::exists(st);
  if (existed && !fs::is_directory(st)) throw_bad_input(what, "exists and is not a directory");
  if (!existed) {
    fs::create_directories(dir, ec);
    if (ec || !fs::is_directory(dir, ec))
      throw_bad_input(what, "cannot create the output directory: " + (ec ? ec.message() : std::string("failed")));
  }

  // A probe file: a directory we cannot write into is found now, not after the computation.
  {
    std::string tmp;
    int err = 0;
    Fd fd{create_temp(dir / ".indexcache-probe", tmp, err)};
    if (fd.fd < 0) throw_bad_input(what, "cannot write into the output directory: " + errno_text(err));
    const int werr = write_all(fd.fd, "probe\n");
    ::close(fd.release());
    ::unlink(tmp.c_str());
    if (werr) throw_bad_input(what, "cannot write into the output directory: " + errno_text(werr));
  }

  if (existed) {
    const std::string owner = marker_owner(dir);
    if (owner != mine && !o.force) {
      // Entries besides the marker: none (an empty directory, or one a failed run claimed) is
      // free to take; otherwise only this command's own directory, or what `adoptable` allows.
      std::string first;  // an entry that is not ours, named in the message
      bool adopt = true;
      int entries = 0;
      for (const auto& e : fs::directory_iterator(dir, ec)) {
        const std::string name = e.path().filename().string();
        if (name == kOutputMarker) continue;
        ++entries;
        bool ok = false;
        for (const auto& a : o.adoptable) ok = ok || (name == a && e.is_regular_file(ec));
        if (!ok) {
          adopt = false;
          if (first.empty()) first = name;
        }
      }
      if (ec) throw_bad_input(what, "cannot list the output directory: " + ec.message());
      if (entries > 0 && owner.rfind("indexcache ", 0) == 0)
        throw_bad_input(what, "holds the output of " + quote_for_message(owner) + ", not of indexcache " + o.command +
                                  " (give another --out, or --force to write there)");
      if (entries > 0 && !adopt)
        throw_bad_input(what, "is not empty (it holds " + quote_for_message(first) + ") and was not written by indexcache " +
                                  o.command + "; refusing to replace files there (give a new or empty directory, or --force)");
    }
  }
  const std::string dir_string = dir.string();
  try {
    write_file_atomic((dir / std::string(kOutputMarker)).string(), marker_text(o.command));
  } catch (const Error& e) {
    throw_bad_input(what, std::string("cannot write into the output directory (") + e.what() + ")");
  }
  return OutputDir(dir_string);
}

std::string OutputDir::file(std::string_view name) const { return (fs::path(path_) / std::string(name)).string(); }

void OutputDir::write(std::string_view name, const std::string& text) const { write_file_atomic(file(name), text); }

}  // namespace indexcache
