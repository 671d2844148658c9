// The gated part of the SwiGLU feed-forward w2(silu(w1 x) ⊙ w3 x): with a = w1 x and b = w3 x,
// h = silu(a) ⊙ b, silu(a) = a · sigmoid(a). The three matrix products are linear ops.
#pragma once

#include "ops/common.h"

namespace scratchlm {

// h (N, F); a, b (N, F)
void swiglu_forward(float* h, const float* a, const float* b, std::int64_t n);

// da = dh ⊙ b ⊙ silu'(a), silu'(a) = s (1 + a (1 − s)) with s = sigmoid(a);  db = dh ⊙ silu(a).
// Overwrites da and db; they may alias a and b.
void swiglu_backward(float* da, float* db, const float* dh, const float* a, const float* b, std::int64_t n);

}  // namespace scratchlm
