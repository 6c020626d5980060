// Counter-based random bf16 weights (synthetic_weights): element i of a tensor is a pure function
// of (seed, the tensor's name, i), so any range of any tensor can be filled on any thread, in any
// order, with the same result.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace indexcache::random_fill {

// splitmix64's output function: a bijective 64-bit mix.
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The stream key of the tensor `name` under `seed` (FNV-1a of the name, mixed with the seed).
inline uint64_t tensor_key(uint64_t seed, std::string_view name) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001B3ull;
  return mix64(mix64(seed ^ 0x5851F42D4C957F2Dull) ^ h);
}

// 64 random bits for element i of the stream `key`: splitmix64's i-th output from state `key`.
inline uint64_t element_bits(uint64_t key, uint64_t i) { return mix64(key + (i + 1) * 0x9E3779B97F4A7C15ull); }

// f32 -> bf16, round to nearest even (finite values; as f32_to_bf16 in indexcache/dtype.h).
inline uint16_t to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

// dst[i - begin] for i in [begin, end): uniform on [-a, a) (24 random bits, one rounding to f32),
// rounded to bf16.
inline void uniform_bf16(uint16_t* dst, uint64_t key, int64_t begin, int64_t end, float a) {
  const float scale = a * 0x1p-24f;  // exact: a power-of-two scaling
  for (int64_t i = begin; i < end; ++i) {
    const auto u = static_cast<int32_t>(element_bits(key, static_cast<uint64_t>(i)) >> 40);  // [0, 2^24)
    dst[i - begin] = to_bf16(static_cast<float>(2 * u - (1 << 24)) * scale);                // exact int
  }
}

}  // namespace indexcache::random_fill
