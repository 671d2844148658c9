// exp for float that the compiler can vectorize (glibc's expf is a call per element). Cephes'
// expf: exp(x) = 2^n · exp(r), n = round(x·log2(e)), r = x − n·ln 2 with ln 2 split in two parts
// so r is exact, exp(r) by a degree-6 polynomial on |r| ≤ ln2/2. Relative error below 2e-7
// (about two float roundings; tests/ops_gradcheck_test.cpp checks it against double exp).
// Domain: x ≤ 88 (every caller passes x ≤ 0: z − max in softmax, −|a| in the sigmoid). Below
// −87.3 the result is 0 (float's normal range ends there; denormals are not produced). NaN stays NaN. (An upper clamp as well makes GCC 12's
// vector code ten times slower on this CPU, and no caller needs it.)
// It earns its place: cross-entropy, softmax and the SwiGLU gate spend most of their time in exp;
// glibc's expf is a call per element (bench/train_cpu, see BENCHMARKS.md).
#pragma once

#include <bit>
#include <cstdint>

namespace scratchlm {

inline float fast_exp(float x) {
  constexpr float kMin = -87.3365479f;   // with x ≤ 88, n = round(x·log2 e) stays in [−126, 127]
  const bool underflow = x < kMin;
  x = underflow ? kMin : x;
  // round(x·log2 e) by the 1.5·2^23 trick: adding it leaves the rounded integer in the low mantissa bits
  constexpr float kShift = 12582912.0f;
  const float shifted = x * 1.44269504088896341f + kShift;
  const float n = shifted - kShift;
  const std::int32_t ni = std::bit_cast<std::int32_t>(shifted) - std::bit_cast<std::int32_t>(kShift);
  float r = x - n * 0.693359375f;   // ln 2 = 0.693359375 − 2.12194440e-4, the first part exact in float
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * r * r + r + 1.0f;
  const float result = er * std::bit_cast<float>((ni + 127) << 23);   // · 2^n, from the exponent bits
  return underflow ? 0.0f : result;
}

// sigmoid(a) = 1 / (1 + exp(−a)), through exp(−|a|) ≤ 1 so that neither branch overflows.
inline float fast_sigmoid(float a) {
  const float e = fast_exp(a < 0.0f ? a : -a);
  return a < 0.0f ? e / (1.0f + e) : 1.0f / (1.0f + e);
}

}  // namespace scratchlm
