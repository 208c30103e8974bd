#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kiln {

enum class DType : uint8_t { F32, F16, BF16, I8, F8E4M3, U8 };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
// Throws kiln::Error naming the unknown spelling.
DType dtype_from_name(std::string_view name);

// Scalar conversions, round-to-nearest-even. The fp8 format is E4M3 "fn" (no infinities, max 448):
// conversion saturates instead of producing NaN, as calibrated quantization requires.
float bf16_to_f32(uint16_t bits);
uint16_t f32_to_bf16(float value);
float f16_to_f32(uint16_t bits);
uint16_t f32_to_f16(float value);
float f8e4m3_to_f32(uint8_t bits);
uint8_t f32_to_f8e4m3(float value);

constexpr float kF8E4M3Max = 448.0f;

// Decodes `count` elements of a float-like dtype (f32, f16, bf16, f8e4m3) into fp32.
void decode_to_f32(DType dtype, const void* src, float* dst, size_t count);
// Encodes fp32 into a float-like dtype (f32, f16, bf16); the quantized dtypes need scales and go
// through compiler/precision instead.
void encode_from_f32(DType dtype, const float* src, void* dst, size_t count);

}  // namespace kiln
