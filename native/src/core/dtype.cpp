#include "core/dtype.h"

#include <cmath>
#include <cstring>
#include <string>

#include "core/error.h"

namespace kiln {

namespace {

uint32_t float_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

float bits_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

}  // namespace

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32: return 4;
    case DType::F16:
    case DType::BF16: return 2;
    case DType::I8:
    case DType::F8E4M3:
    case DType::U8: return 1;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::I8: return "i8";
    case DType::F8E4M3: return "f8e4m3";
    case DType::U8: return "u8";
  }
  return "?";
}

DType dtype_from_name(std::string_view name) {
  for (DType d : {DType::F32, DType::F16, DType::BF16, DType::I8, DType::F8E4M3, DType::U8}) {
    if (name == dtype_name(d)) return d;
  }
  throw Error("unknown dtype \"" + std::string(name) + "\"");
}

float bf16_to_f32(uint16_t bits) { return bits_float(static_cast<uint32_t>(bits) << 16); }

uint16_t f32_to_bf16(float value) {
  uint32_t x = float_bits(value);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-08f;  // 2^-24
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

uint16_t f32_to_f16(float value) {
  const uint32_t x = float_bits(value);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u);
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // 65520 and above round to infinity
  if (ax < 0x38800000u) {
    // Below the smallest normal half: count units of 2^-24; the scaling is exact, nearbyint rounds
    // to even, and a result of 0x400 is exactly the encoding of the smallest normal.
    const float units = std::nearbyint(bits_float(ax) * 16777216.0f);
    return sign | static_cast<uint16_t>(units);
  }
  const uint32_t exponent = (ax >> 23) - 112u;
  const uint32_t mantissa = ax & 0x7fffffu;
  uint32_t h = (exponent << 10) | (mantissa >> 13);
  const uint32_t rest = mantissa & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return sign | static_cast<uint16_t>(h);
}

float f8e4m3_to_f32(uint8_t bits) {
  const bool negative = bits & 0x80u;
  const int exponent = (bits >> 3) & 0xf;
  const int mantissa = bits & 0x7;
  float magnitude;
  if (exponent == 15 && mantissa == 7) {
    magnitude = std::nanf("");
  } else if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -9);
  } else {
    magnitude = std::ldexp(1.0f + static_cast<float>(mantissa) / 8.0f, exponent - 7);
  }
  return negative ? -magnitude : magnitude;
}

uint8_t f32_to_f8e4m3(float value) {
  if (std::isnan(value)) return 0x7f;
  const uint8_t sign = std::signbit(value) ? 0x80 : 0x00;
  const float a = std::fabs(value);
  if (a >= kF8E4M3Max) return sign | 0x7e;
  if (a < 0.015625f) {  // below 2^-6: subnormal, units of 2^-9; 8 units encode the smallest normal
    return sign | static_cast<uint8_t>(std::nearbyint(a * 512.0f));
  }
  int exp2;
  const float fraction = std::frexp(a, &exp2);  // a = fraction * 2^exp2, fraction in [0.5, 1)
  int exponent = exp2 - 1 + 7;
  int steps = static_cast<int>(std::nearbyint(fraction * 16.0f));  // 1.mmm in eighths: [8, 16]
  if (steps == 16) {
    steps = 8;
    ++exponent;
  }
  if (exponent > 15 || (exponent == 15 && steps - 8 == 7)) return sign | 0x7e;
  return sign | static_cast<uint8_t>((exponent << 3) | (steps - 8));
}

void decode_to_f32(DType dtype, const void* src, float* dst, size_t count) {
  switch (dtype) {
    case DType::F32:
      std::memcpy(dst, src, count * sizeof(float));
      return;
    case DType::F16: {
      const auto* p = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < count; ++i) dst[i] = f16_to_f32(p[i]);
      return;
    }
    case DType::BF16: {
      const auto* p = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < count; ++i) dst[i] = bf16_to_f32(p[i]);
      return;
    }
    case DType::F8E4M3: {
      const auto* p = static_cast<const uint8_t*>(src);
      for (size_t i = 0; i < count; ++i) dst[i] = f8e4m3_to_f32(p[i]);
      return;
    }
    default:
      throw Error(std::string("cannot decode dtype ") + dtype_name(dtype) + " to f32 without scales");
  }
}

void encode_from_f32(DType dtype, const float* src, void* dst, size_t count) {
  switch (dtype) {
    case DType::F32:
      std::memcpy(dst, src, count * sizeof(float));
      return;
    case DType::F16: {
      auto* p = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < count; ++i) p[i] = f32_to_f16(src[i]);
      return;
    }
    case DType::BF16: {
      auto* p = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < count; ++i) p[i] = f32_to_bf16(src[i]);
      return;
    }
    default:
      throw Error(std::string("cannot encode f32 as ") + dtype_name(dtype) + " without scales");
  }
}

}  // namespace kiln
