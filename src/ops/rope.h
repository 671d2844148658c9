// Rotary position embedding (Su et al. 2021) as CS336: the interleaved pairs (x[2k], x[2k+1]) of
// each head are rotated by the angle pos · theta^(−2k/D), k = 0 .. D/2 − 1. The angles' cosines and
// sines are computed in double once per model (RopeTable) and stored as float.
#pragma once

#include <cstdint>
#include <vector>

#include "ops/common.h"

namespace scratchlm {

struct RopeTable {
  std::int64_t max_positions = 0, half = 0;   // rows, D/2
  std::vector<float> cos, sin;                // (max_positions, D/2)
};
RopeTable make_rope_table(double theta, std::int64_t D, std::int64_t max_positions);

// out (B, T, H, D) = rotation of x (B, T, H, D); positions (T), each < table.max_positions.
// out may alias x.
void rope_forward(float* out, const float* x, const std::int32_t* positions, const RopeTable& table,
                  std::int64_t B, std::int64_t T, std::int64_t H, std::int64_t D);

// dx = Rᵀ dout (the rotation by −angle); dx may alias dout. Overwrites dx.
void rope_backward(float* dx, const float* dout, const std::int32_t* positions, const RopeTable& table,
                   std::int64_t B, std::int64_t T, std::int64_t H, std::int64_t D);

}  // namespace scratchlm
