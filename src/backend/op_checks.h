// The view checks every backend's ops make before running: one-line errors naming the op.
#pragma once

#include <string>

#include "backend/backend.h"

namespace indexcache::op_checks {

inline void need(bool ok, const char* op, const std::string& what) {
  if (!ok) throw_op_error(op, what);
}
inline std::string dt(DType t) { return std::string(dtype_name(t)); }
inline void need_dtype(const TensorView& v, DType t, const char* op, const char* name) {
  if (v.dtype != t) throw_op_error(op, std::string(name) + " is " + dt(v.dtype) + ", needs " + dt(t));
}
// A non-empty view of rank `rank` whose innermost dimension is contiguous.
inline void need_view(const TensorView& v, int rank, const char* op, const char* name) {
  need(!v.empty(), op, std::string(name) + " is empty");
  need(v.rank == rank, op,
       std::string(name) + " must be " + std::to_string(rank) + "-D (is " + std::to_string(v.rank) + "-D)");
  need(v.stride[rank - 1] == 1, op, std::string(name) + "'s innermost dimension must be contiguous");
}

}  // namespace indexcache::op_checks
