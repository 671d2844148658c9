// Softmax and cross-entropy, stable for any logit scale: the row maximum is subtracted before
// exponentiating, and the sum of exponentials is accumulated in double.
//   loss_n = lse(z_n) − z_n[target_n],  lse(z) = max z + log Σ exp(z − max z)
// The model's loss is the mean over the N rows.
#pragma once

#include "ops/common.h"

namespace scratchlm {

// out (N, V) = softmax of each row of x (N, V); out may alias x.
void softmax_forward(float* out, const float* x, std::int64_t N, std::int64_t V);

// losses (N), lse (N); logits (N, V), targets (N) in [0, V). Returns the mean loss (double).
double cross_entropy_forward(float* losses, float* lse, const float* logits, const std::int32_t* targets,
                             std::int64_t N, std::int64_t V);

// dlogits (N, V) = (softmax(z) − onehot(target)) · scale; scale = dloss / N for the mean loss.
// Overwrites dlogits, which may alias logits.
void cross_entropy_backward(float* dlogits, const float* logits, const float* lse, const std::int32_t* targets,
                            std::int64_t N, std::int64_t V, float scale);

}  // namespace scratchlm
