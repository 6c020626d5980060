#include "core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "indexcache/error.h"

namespace indexcache {

namespace {

const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "a special file";
}

[[noreturn]] void fail_errno(const std::string& path, const char* what, int e) {
  throw_bad_input(path_for_message(path), std::string(what) + std::strerror(e));
}

// An fd for reading the regular file `path`, checked before and after the open: stat() first, so
// that nothing else is opened at all (opening a FIFO blocks, opening a device may act); then
// O_NONBLOCK and fstat() on the fd, so that a file swapped for a FIFO in between cannot block
// either. The caller closes the fd; `st` gets its fstat.
int open_regular(const std::string& path, struct stat& st) {
  if (::stat(path.c_str(), &st) != 0) fail_errno(path, "cannot open: ", errno);
  if (!S_ISREG(st.st_mode))
    throw_bad_input(path_for_message(path), std::string("not a regular file (") + file_kind(st.st_mode) + ")");
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail_errno(path, "cannot open: ", errno);
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    fail_errno(path, "cannot open: ", e);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw_bad_input(path_for_message(path), std::string("not a regular file (") + file_kind(st.st_mode) + ")");
  }
  return fd;
}

}  // namespace

std::string path_for_message(std::string_view path) {
  const bool plain = std::none_of(path.begin(), path.end(), [](char ch) {
    const auto c = static_cast<unsigned char>(ch);
    return c < 0x20 || c == 0x7f;
  });
  return plain ? std::string(path) : quote_for_message(path);
}

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  struct stat st {};
  const int fd = open_regular(path, st);
  auto f = std::shared_ptr<MappedFile>(new MappedFile());
  f->path_ = path;
  f->size_ = static_cast<size_t>(st.st_size);
  if (f->size_ > 0) {
    void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      fail_errno(path, "cannot map: ", e);
    }
    f->data_ = static_cast<const std::byte*>(p);
  }
  ::close(fd);
  return f;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
}

std::string read_regular_file(const std::string& path, size_t max_bytes) {
  struct stat st {};
  const int fd = open_regular(path, st);
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    ::close(fd);
    throw_bad_input(path_for_message(path), std::to_string(st.st_size) + " bytes, more than the limit of " +
                                                std::to_string(max_bytes));
  }
  std::string out(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < out.size()) {
    const ssize_t n = ::read(fd, out.data() + got, out.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int e = errno;
      ::close(fd);
      fail_errno(path, "cannot read: ", e);
    }
    if (n == 0) break;  // shrank while reading: what is there
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  out.resize(got);
  return out;
}

}  // namespace indexcache
