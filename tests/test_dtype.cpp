// Element conversions against hand-computed values: FP8 E4M3 ("fn") decoding and block-FP8
// dequantization (DeepSeek-V3.2 / GLM-5-FP8 weights: a multiplier per block, edge blocks partial).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "indexcache/dtype.h"

namespace indexcache {
namespace {

TEST(Dtype, Fp8E4M3Values) {
  EXPECT_EQ(fp8_e4m3_to_f32(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(fp8_e4m3_to_f32(0x80)));  // -0
  EXPECT_EQ(fp8_e4m3_to_f32(0x38), 1.0f);            // exponent 7 = bias
  EXPECT_EQ(fp8_e4m3_to_f32(0x3C), 1.5f);            // mantissa 4/8
  EXPECT_EQ(fp8_e4m3_to_f32(0xC0), -2.0f);
  EXPECT_EQ(fp8_e4m3_to_f32(0x7E), 448.0f);          // the largest finite: 1.75 * 2^8
  EXPECT_EQ(fp8_e4m3_to_f32(0x08), 0.015625f);       // smallest normal 2^-6
  EXPECT_EQ(fp8_e4m3_to_f32(0x01), 0.001953125f);    // smallest subnormal 2^-9
  EXPECT_EQ(fp8_e4m3_to_f32(0x07), 0.013671875f);    // 7/8 * 2^-6
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_f32(0x7F)));
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_f32(0xFF)));
  EXPECT_EQ(fp8_e4m3_to_f32(0x78), 256.0f);  // exponent 15 is finite in e4m3fn
  // convert_to_f32 decodes unscaled bytes the same way.
  const uint8_t bytes[] = {0x38, 0xC0, 0x01, 0x7E};
  float out[4];
  convert_to_f32(DType::kF8E4M3, bytes, 4, out);
  EXPECT_EQ(std::vector<float>(out, out + 4), (std::vector<float>{1.0f, -2.0f, 0.001953125f, 448.0f}));
}

// A [3, 5] weight in 2 x 2 blocks: a [2, 3] scale grid whose last row and column cover partial
// blocks.
TEST(Dtype, Fp8BlockDequantization) {
  std::vector<uint8_t> w(15, 0x38);  // every element 1.0
  w[4] = 0xC0;                       // (0, 4): -2
  w[14] = 0x3C;                      // (2, 4): 1.5
  const std::vector<float> scale = {0.5f, 2.0f, 4.0f,  //
                                    8.0f, 16.0f, 32.0f};
  std::vector<float> out(15);
  dequantize_fp8_blocks(w.data(), scale.data(), 3, 5, 2, 2, out.data());
  const std::vector<float> want = {0.5f, 0.5f, 2.0f,  2.0f,  -8.0f,  //
                                   0.5f, 0.5f, 2.0f,  2.0f,  4.0f,   //
                                   8.0f, 8.0f, 16.0f, 16.0f, 48.0f};
  EXPECT_EQ(out, want);
}

}  // namespace
}  // namespace indexcache
