// LayerNorm (Ba, Kiros & Hinton 2016), as torch.nn.LayerNorm over the last dimension:
//   y = (x − mean) / sqrt(var + eps) · weight + bias,   var the biased (population) variance,
// computed in fp32 with the mean and the variance accumulated in double. mean and rstd =
// 1 / sqrt(var + eps) are saved for backward. The bias is optional (null: none), as the "norm_bias"
// model field says.
#pragma once

#include "ops/common.h"

namespace scratchlm {

constexpr float kLayerNormEps = 1e-5f;

// out (N, C), mean (N), rstd (N); x (N, C), weight (C), bias (C) or null. out may not alias x.
void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* weight, const float* bias,
                       std::int64_t N, std::int64_t C, float eps = kLayerNormEps);

// With x̂ = (x − mean)·r and g = weight ⊙ dy:
//   dx = r · (g − mean(g) − x̂ · mean(g ⊙ x̂));   dweight = Σ_n dy ⊙ x̂;   dbias = Σ_n dy.
// dx (N, C) overwritten or accumulated (dx_acc); dweight (C) and dbias (C) accumulate; dbias is null
// when there is no bias.
void layernorm_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                        const float* weight, const float* mean, const float* rstd, std::int64_t N, std::int64_t C,
                        Accumulate dx_acc);

}  // namespace scratchlm
