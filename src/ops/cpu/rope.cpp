#include "ops/rope.h"

#include <cmath>

#include "util/error.h"

namespace scratchlm {

RopeTable make_rope_table(double theta, std::int64_t D, std::int64_t max_positions) {
  RopeTable t;
  t.max_positions = max_positions;
  t.half = D / 2;
  t.cos.resize(static_cast<std::size_t>(max_positions * t.half));
  t.sin.resize(t.cos.size());
  for (std::int64_t p = 0; p < max_positions; ++p)
    for (std::int64_t k = 0; k < t.half; ++k) {
      // the same formula as the reference: theta ** (-(2k) / D), in double
      const double angle = static_cast<double>(p) * std::pow(theta, -static_cast<double>(2 * k) / static_cast<double>(D));
      t.cos[p * t.half + k] = static_cast<float>(std::cos(angle));
      t.sin[p * t.half + k] = static_cast<float>(std::sin(angle));
    }
  return t;
}

namespace {

// sign = +1: rotate by +angle (forward); −1: by −angle (backward, the transpose).
void rotate(float* out, const float* x, const std::int32_t* positions, const RopeTable& table, std::int64_t B,
            std::int64_t T, std::int64_t H, std::int64_t D, float sign) {
  SLM_CHECK(D == 2 * table.half, "RoPE table built for another head size");
#pragma omp parallel for collapse(2) schedule(static)
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t < T; ++t) {
      const std::int64_t pos = positions[t];
      SLM_CHECK(pos >= 0 && pos < table.max_positions, "RoPE position ", pos, " outside the table");
      const float* cs = table.cos.data() + pos * table.half;
      const float* sn = table.sin.data() + pos * table.half;
      for (std::int64_t h = 0; h < H; ++h) {
        const std::int64_t base = ((b * T + t) * H + h) * D;
        for (std::int64_t k = 0; k < table.half; ++k) {
          const float x0 = x[base + 2 * k], x1 = x[base + 2 * k + 1];
          const float c = cs[k], s = sign * sn[k];
          out[base + 2 * k] = x0 * c - x1 * s;
          out[base + 2 * k + 1] = x0 * s + x1 * c;
        }
      }
    }
}

}  // namespace

void rope_forward(float* out, const float* x, const std::int32_t* positions, const RopeTable& table, std::int64_t B,
                  std::int64_t T, std::int64_t H, std::int64_t D) {
  rotate(out, x, positions, table, B, T, H, D, 1.0f);
}

void rope_backward(float* dx, const float* dout, const std::int32_t* positions, const RopeTable& table,
                   std::int64_t B, std::int64_t T, std::int64_t H, std::int64_t D) {
  rotate(dx, dout, positions, table, B, T, H, D, -1.0f);
}

}  // namespace scratchlm
