#pragma once

#include <cstdint>
#include <cstring>

#include "core/dtype.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define KILN_CPU_AVX2 1
#endif

namespace kiln::cpu {

// Eight fp32 lanes: AVX2 where compiled in, plain arrays elsewhere, so every kernel is written once.
#if KILN_CPU_AVX2
struct F8x {
  __m256 v;
};
inline F8x zero8() { return {_mm256_setzero_ps()}; }
inline F8x load8(const float* p) { return {_mm256_loadu_ps(p)}; }
inline F8x fma8(F8x a, F8x b, F8x c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline float sum8(F8x a) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  __m128 shuf = _mm_movehdup_ps(lo);
  __m128 sums = _mm_add_ps(lo, shuf);
  shuf = _mm_movehl_ps(shuf, sums);
  return _mm_cvtss_f32(_mm_add_ss(sums, shuf));
}
#else
struct F8x {
  float v[8];
};
inline F8x zero8() { return {}; }
inline F8x load8(const float* p) {
  F8x r;
  std::memcpy(r.v, p, sizeof r.v);
  return r;
}
inline F8x fma8(F8x a, F8x b, F8x c) {
  for (int i = 0; i < 8; ++i) c.v[i] += a.v[i] * b.v[i];
  return c;
}
inline float sum8(F8x a) {
  float s = 0;
  for (float x : a.v) s += x;
  return s;
}
#endif

// Weight decoders: eight (or one) elements at `p` widened to fp32.
struct WeightF32 {
  static constexpr size_t kSize = 4;
  static F8x load(const uint8_t* p) { return load8(reinterpret_cast<const float*>(p)); }
  static float one(const uint8_t* p) {
    float v;
    std::memcpy(&v, p, 4);
    return v;
  }
};

struct WeightBF16 {
  static constexpr size_t kSize = 2;
  static F8x load(const uint8_t* p) {
#if KILN_CPU_AVX2
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(wide, 16))};
#else
    F8x r;
    for (int i = 0; i < 8; ++i) r.v[i] = one(p + 2 * i);
    return r;
#endif
  }
  static float one(const uint8_t* p) {
    uint16_t b;
    std::memcpy(&b, p, 2);
    return bf16_to_f32(b);
  }
};

struct WeightF16 {
  static constexpr size_t kSize = 2;
  static F8x load(const uint8_t* p) {
#if KILN_CPU_AVX2
    return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
#else
    F8x r;
    for (int i = 0; i < 8; ++i) r.v[i] = one(p + 2 * i);
    return r;
#endif
  }
  static float one(const uint8_t* p) {
    uint16_t b;
    std::memcpy(&b, p, 2);
    return f16_to_f32(b);
  }
};

struct WeightI8 {
  static constexpr size_t kSize = 1;
  static F8x load(const uint8_t* p) {
#if KILN_CPU_AVX2
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes))};
#else
    F8x r;
    for (int i = 0; i < 8; ++i) r.v[i] = one(p + i);
    return r;
#endif
  }
  static float one(const uint8_t* p) { return static_cast<float>(static_cast<int8_t>(*p)); }
};

struct WeightF8E4M3 {
  static constexpr size_t kSize = 1;
  static F8x load(const uint8_t* p) {
#if KILN_CPU_AVX2
    // E4M3 magnitude bits shifted left by 7 form an fp16 whose value is 2^-8 times the fp8 value
    // (exponent bias 15 vs 7), subnormals included; the NaN code never occurs in quantized weights.
    const __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    const __m128i sign = _mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x80)), 8);
    const __m128i magnitude = _mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x7f)), 7);
    const __m256 f = _mm256_cvtph_ps(_mm_or_si128(sign, magnitude));
    return {_mm256_mul_ps(f, _mm256_set1_ps(256.0f))};
#else
    F8x r;
    for (int i = 0; i < 8; ++i) r.v[i] = one(p + i);
    return r;
#endif
  }
  static float one(const uint8_t* p) { return f8e4m3_to_f32(*p); }
};

}  // namespace kiln::cpu
