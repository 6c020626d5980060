// Scratch memory for one forward pass: views carved from backend buffers, all forgotten at once by
// reset(). When a pass needed more than one buffer, reset() replaces them by one buffer of their
// total size, so a steady state (same chunk sizes) allocates nothing.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/backend.h"

namespace indexcache {

class Arena {
 public:
  explicit Arena(Backend& be) : be_(be) {}
  // A fresh [rows, cols] view (contents undefined), 256-byte aligned.
  TensorView take(DType t, int64_t rows, int64_t cols);
  TensorView take_1d(DType t, int64_t n) {
    const TensorView v = take(t, n, 1);
    return view1d(v.data, t, n);
  }
  void reset();
  size_t capacity() const;
  // Changes whenever the arena's memory changes (a block added or the blocks merged): views taken
  // before are then no longer where later takes land.
  uint64_t generation() const { return generation_; }

 private:
  Backend& be_;
  std::vector<Buffer> blocks_;
  size_t used_ = 0;  // bytes taken from blocks_.back()
  uint64_t generation_ = 0;
};

}  // namespace indexcache
