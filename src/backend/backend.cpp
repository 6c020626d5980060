#include "backend/backend.h"

#include <chrono>

#include "indexcache/error.h"

namespace indexcache {

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    release();
    owner_ = o.owner_;
    data_ = o.data_;
    bytes_ = o.bytes_;
    o.owner_ = nullptr;
    o.data_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

void Buffer::release() {
  if (owner_ && data_) owner_->deallocate(data_, bytes_);
  owner_ = nullptr;
  data_ = nullptr;
  bytes_ = 0;
}

Buffer Backend::alloc(size_t bytes) {
  if (bytes == 0) return {};
  return Buffer(this, allocate(bytes), bytes);
}

Tensor Backend::tensor(DType t, int64_t rows, int64_t cols) {
  Tensor r;
  r.buffer = alloc(static_cast<size_t>(rows * cols) * dtype_size(t));
  r.view = view2d(r.buffer.data(), t, rows, cols);
  return r;
}

const char* op_kind_name(OpKind k) {
  static constexpr const char* names[] = {"linear", "linear_heads", "norm", "rope", "cache_rows", "indexer_scores",
                                          "topk", "sparse_attention", "mlp", "moe", "embed", "elementwise"};
  const int i = static_cast<int>(k);
  return i >= 0 && i < static_cast<int>(OpKind::kCount) ? names[i] : "?";
}

void throw_op_error(const char* op, const std::string& what) { throw_runtime(std::string("backend op ") + op, what); }

double backend_clock_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace indexcache
