// The feed-forward variants' activations (issue 6), element-wise over n values:
//   relu(x) = max(x, 0);  relu2(x) = relu(x)²;  silu(x) = x·σ(x);
//   gelu(x) = x·Φ(x) = ½x(1 + erf(x/√2))  (exact, PyTorch's default F.gelu).
// Plain:  out = act(x).   Gated (GLU variants, Shazeer 2020): h = act(a) ⊙ b.
// The SwiGLU default keeps its own tuned op (swiglu.h); these are the others.
#pragma once

#include "model/config.h"
#include "ops/common.h"

namespace scratchlm {

void activation_forward(float* out, const float* x, std::int64_t n, Activation act);
// dx = dout ⊙ act'(x); overwrites dx (may alias dout).
void activation_backward(float* dx, const float* dout, const float* x, std::int64_t n, Activation act);

void gated_forward(float* h, const float* a, const float* b, std::int64_t n, Activation act);
// da = dh ⊙ b ⊙ act'(a), db = dh ⊙ act(a); overwrites da and db (they may alias a and b).
void gated_backward(float* da, float* db, const float* dh, const float* a, const float* b, std::int64_t n,
                    Activation act);

}  // namespace scratchlm
