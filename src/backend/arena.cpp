#include "backend/arena.h"

#include <algorithm>

namespace indexcache {

namespace {
constexpr size_t kAlign = 256;
size_t round_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
}  // namespace

TensorView Arena::take(DType t, int64_t rows, int64_t cols) {
  const size_t need = round_up(std::max<size_t>(1, static_cast<size_t>(rows * cols) * dtype_size(t)));
  if (blocks_.empty() || used_ + need > blocks_.back().bytes()) {
    const size_t last = blocks_.empty() ? 0 : blocks_.back().bytes();
    blocks_.push_back(be_.alloc(std::max({need, 2 * last, size_t{1} << 20})));
    used_ = 0;
    ++generation_;
  }
  void* p = static_cast<char*>(blocks_.back().data()) + used_;
  used_ += need;
  return view2d(p, t, rows, cols);
}

void Arena::reset() {
  if (blocks_.size() > 1) {
    const size_t total = capacity();
    blocks_.clear();
    blocks_.push_back(be_.alloc(total));
    ++generation_;
  }
  used_ = 0;
}

size_t Arena::capacity() const {
  size_t total = 0;
  for (const Buffer& b : blocks_) total += b.bytes();
  return total;
}

}  // namespace indexcache
