#include "indexcache/dtype.h"

#include <cmath>
#include <cstring>
#include <stdexcept>

namespace indexcache {

namespace {
struct DTypeInfo {
  DType type;
  std::string_view name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::kF32, "F32", 4},   {DType::kBF16, "BF16", 2}, {DType::kF16, "F16", 2},
    {DType::kI32, "I32", 4},   {DType::kI64, "I64", 8},   {DType::kF8E4M3, "F8_E4M3", 1},
    {DType::kU8, "U8", 1},     {DType::kI8, "I8", 1},     {DType::kBool, "BOOL", 1},
    {DType::kF64, "F64", 8},   {DType::kI16, "I16", 2},
};
}  // namespace

size_t dtype_size(DType t) {
  for (const auto& d : kDTypes)
    if (d.type == t) return d.size;
  return 0;
}

std::string_view dtype_name(DType t) {
  for (const auto& d : kDTypes)
    if (d.type == t) return d.name;
  return "?";
}

std::optional<DType> parse_dtype(std::string_view s) {
  for (const auto& d : kDTypes)
    if (d.name == s) return d.type;
  return std::nullopt;
}

float bf16_to_f32(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if (std::isnan(f)) return 0x7FC0;
  uint32_t rounding = 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      mant &= 0x3FF;
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float fp8_e4m3_to_f32(uint8_t v) {
  // E4M3 "fn" (OCP FP8): bias 7, no infinities, S.1111.111 is NaN; exponent 0 is subnormal.
  const uint32_t exp = (v >> 3) & 0xF, mant = v & 0x7;
  float mag;
  if (exp == 0xF && mant == 0x7)
    mag = std::nanf("");
  else if (exp == 0)
    mag = std::ldexp(static_cast<float>(mant), -9);  // mant / 8 * 2^-6
  else
    mag = std::ldexp(static_cast<float>(8 + mant), static_cast<int>(exp) - 10);  // (1 + mant/8) 2^(exp-7)
  return (v & 0x80) ? -mag : mag;
}

void dequantize_fp8_blocks(const void* w, const float* scale_inv, int64_t rows, int64_t cols, int block_rows,
                           int block_cols, float* dst) {
  float table[256];
  for (int i = 0; i < 256; ++i) table[i] = fp8_e4m3_to_f32(static_cast<uint8_t>(i));
  const auto* p = static_cast<const uint8_t*>(w);
  const int64_t grid_cols = (cols + block_cols - 1) / block_cols;
  for (int64_t r = 0; r < rows; ++r) {
    const float* srow = scale_inv + (r / block_rows) * grid_cols;
    for (int64_t c = 0; c < cols; ++c) dst[r * cols + c] = table[p[r * cols + c]] * srow[c / block_cols];
  }
}

void convert_to_f32(DType t, const void* src, size_t n, float* dst) {
  const auto* p = static_cast<const unsigned char*>(src);
  switch (t) {
    case DType::kF32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, p + 2 * i, 2);
        dst[i] = bf16_to_f32(v);
      }
      return;
    case DType::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, p + 2 * i, 2);
        dst[i] = f16_to_f32(v);
      }
      return;
    case DType::kF8E4M3:
      for (size_t i = 0; i < n; ++i) dst[i] = fp8_e4m3_to_f32(p[i]);
      return;
    default:
      throw std::logic_error("convert_to_f32: unsupported dtype");
  }
}

}  // namespace indexcache
