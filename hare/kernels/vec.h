// Hare's kernels' shared vector helpers: 16-float vectors with GCC/Clang vector extensions (one AVX-512
// register, two AVX2 ones, four NEON ones) and a vectorised exponential.

#pragma once

#include <cstdint>

namespace hare_vec {

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));  // for loads from any float address

inline v16 load(const float* p) { return *reinterpret_cast<const v16u*>(p); }
inline void store(float* p, v16 x) { *reinterpret_cast<v16u*>(p) = x; }
inline v16 splat(float x) { return v16{} + x; }

// 16 bfloat16 values (the upper halves of float32s) widened to float32, exactly
typedef uint16_t u16x16 __attribute__((vector_size(32), aligned(2)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
inline v16 load_bf16(const uint16_t* p) {
  const u32x16 bits = __builtin_convertvector(*reinterpret_cast<const u16x16*>(p), u32x16) << 16;
  return reinterpret_cast<const v16&>(bits);
}
// float32 -> bfloat16 bits, to nearest with ties to even (NaN stays a quiet NaN), as torch converts
inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  __builtin_memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}
inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &bits, sizeof(f));
  return f;
}

// exp(x) for x <= 0 (scores minus their maximum), 16 lanes at a time, within ~2 ulp of expf:
// x = n ln2 + r with |r| <= ln2/2, e^r by its degree-7 Taylor polynomial, 2^n put into the exponent bits.
typedef int32_t i16v __attribute__((vector_size(64)));

inline v16 exp_nonpositive(v16 x) {
  x = x < -87.0f ? splat(-87.0f) : x;  // below, e^x underflows float32 anyway
  const v16 round = splat(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const v16 n = (x * 1.44269504088896341f + round) - round;
  const v16 r = (x - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
  v16 p = splat(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const i16v bits = (__builtin_convertvector(n, i16v) + 127) << 23;
  return p * reinterpret_cast<const v16&>(bits);
}

// The logistic function 1 / (1 + e^-x) for any x, through e^-|x| (never overflows).
inline v16 sigmoid(v16 x) {
  const v16 z = exp_nonpositive(x < 0.0f ? x : -x);
  const v16 one = splat(1.0f);
  return (x < 0.0f ? z : one) / (one + z);
}

}  // namespace hare_vec
