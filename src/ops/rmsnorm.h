// RMSNorm (Zhang & Sennrich 2019), as CS336: y = x / sqrt(mean(x²) + eps) · gain, computed in fp32
// with the mean of squares accumulated in double. rstd = 1 / sqrt(mean(x²) + eps) is saved for
// backward.
#pragma once

#include "ops/common.h"

namespace scratchlm {

constexpr float kRmsNormEps = 1e-5f;

// out (N, C), rstd (N); x (N, C), gain (C). out may not alias x.
void rmsnorm_forward(float* out, float* rstd, const float* x, const float* gain, std::int64_t N, std::int64_t C,
                     float eps = kRmsNormEps);

// With y_j = x_j r g_j:  dx_j = r (g_j dy_j) − x_j r³/C · Σ_k g_k dy_k x_k;  dgain_j = Σ_n dy_j x_j r.
// dx (N, C) overwritten or accumulated (dx_acc); dgain (C) accumulates.
void rmsnorm_backward(float* dx, float* dgain, const float* dout, const float* x, const float* gain,
                      const float* rstd, std::int64_t N, std::int64_t C, Accumulate dx_acc);

}  // namespace scratchlm
