// Element types found in checkpoints, and conversion of their raw bytes to f32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace indexcache {

enum class DType { kF32, kBF16, kF16, kI32, kI64, kF8E4M3, kU8, kI8, kBool, kF64, kI16 };

// Size of one element in bytes.
size_t dtype_size(DType t);
// The safetensors spelling ("F32", "BF16", ...).
std::string_view dtype_name(DType t);
// Parses a safetensors dtype string; nullopt if unknown.
std::optional<DType> parse_dtype(std::string_view s);

float bf16_to_f32(uint16_t v);
float f16_to_f32(uint16_t v);
uint16_t f32_to_bf16(float v);  // round to nearest even

// OCP FP8 E4M3 ("e4m3fn": bias 7, max 448, no infinities, 0x7F / 0xFF NaN) to f32, exactly.
float fp8_e4m3_to_f32(uint8_t v);

// Converts `n` elements of type `t` at `src` (any alignment) to f32. Supported for F32, BF16,
// F16 and F8_E4M3 (unscaled); other types are a programming error (callers check first).
void convert_to_f32(DType t, const void* src, size_t n, float* dst);

// Block-FP8 weight [rows, cols] (E4M3 bytes, row-major) to f32: element (r, c) times
// scale_inv[r / block_rows][c / block_cols] of the [ceil(rows / block_rows), ceil(cols /
// block_cols)] grid (a multiplier, despite the name; edge blocks partial). One f32 product each.
void dequantize_fp8_blocks(const void* w, const float* scale_inv, int64_t rows, int64_t cols, int block_rows,
                           int block_cols, float* dst);

}  // namespace indexcache
