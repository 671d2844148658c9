// bfloat16 as plain C++ sees it: 16 bits, the top half of an IEEE float. Device code reinterprets
// it as CUDA's __nv_bfloat16 (same size and layout). Host conversions round to nearest even, as
// the device's __float2bfloat16 does.
#pragma once

#include <cstdint>
#include <cstring>

namespace scratchlm {

struct Bf16 {
  std::uint16_t bits;
};
static_assert(sizeof(Bf16) == 2);

inline Bf16 to_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return Bf16{static_cast<std::uint16_t>((u >> 16) | 0x40)};   // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return Bf16{static_cast<std::uint16_t>(u >> 16)};
}

inline float to_float(Bf16 h) {
  const std::uint32_t u = static_cast<std::uint32_t>(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace scratchlm
