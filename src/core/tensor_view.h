// A typed, strided view of up to three dimensions on memory a backend owns (host memory for the
// CPU backend, device memory for CUDA). Views never own: the backend's Buffer or the weight
// placement does. The innermost dimension is contiguous; strides are in elements.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "indexcache/dtype.h"

namespace indexcache {

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kF32;
  int rank = 0;
  std::array<int64_t, 3> shape{0, 0, 0};
  std::array<int64_t, 3> stride{0, 0, 0};  // stride[rank - 1] == 1

  bool empty() const { return data == nullptr; }
  int64_t dim(int i) const { return shape[i]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < rank; ++i) n *= shape[i];
    return n;
  }
  template <class T>
  T* as() const { return static_cast<T*>(data); }
  // Pointer to element (i, j, k) of the view (indices past the rank are ignored).
  void* at(int64_t i, int64_t j = 0, int64_t k = 0) const {
    const int64_t off = i * stride[0] + (rank > 1 ? j * stride[1] : 0) + (rank > 2 ? k * stride[2] : 0);
    return static_cast<char*>(data) + off * static_cast<int64_t>(dtype_size(dtype));
  }
  // Rows first..first+n of dimension 0.
  TensorView rows(int64_t first, int64_t n) const {
    TensorView v = *this;
    v.data = at(first);
    v.shape[0] = n;
    return v;
  }
  // Elements first..first+n of the innermost dimension.
  TensorView cols(int64_t first, int64_t n) const {
    TensorView v = *this;
    v.data = static_cast<char*>(data) + first * static_cast<int64_t>(dtype_size(dtype));
    v.shape[rank - 1] = n;
    return v;
  }
  // A contiguous-innermost 2-D view [rows, cols] seen as [rows, heads, cols / heads].
  TensorView split_heads(int64_t heads) const {
    TensorView v = *this;
    v.rank = 3;
    v.shape = {shape[0], heads, shape[1] / heads};
    v.stride = {stride[0], shape[1] / heads, 1};
    return v;
  }
};

// [rows, cols] with rows `ld` elements apart (ld = cols when 0).
inline TensorView view2d(const void* data, DType t, int64_t rows, int64_t cols, int64_t ld = 0) {
  TensorView v;
  v.data = const_cast<void*>(data);
  v.dtype = t;
  v.rank = 2;
  v.shape = {rows, cols, 0};
  v.stride = {ld ? ld : cols, 1, 0};
  return v;
}
inline TensorView view1d(const void* data, DType t, int64_t n) {
  TensorView v;
  v.data = const_cast<void*>(data);
  v.dtype = t;
  v.rank = 1;
  v.shape = {n, 0, 0};
  v.stride = {1, 0, 0};
  return v;
}
// [d0, d1, d2] with the given outer strides (innermost contiguous).
inline TensorView view3d(const void* data, DType t, int64_t d0, int64_t d1, int64_t d2, int64_t s0, int64_t s1) {
  TensorView v;
  v.data = const_cast<void*>(data);
  v.dtype = t;
  v.rank = 3;
  v.shape = {d0, d1, d2};
  v.stride = {s0, s1, 1};
  return v;
}

}  // namespace indexcache
