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

// The final softmax's stability extras (issue 6), both off by default:
//   z_loss:  each row's loss gains z_loss · lse², whose gradient is 2 · z_loss · lse · softmax;
//   softcap: the logits were capped, z = c · tanh(raw / c) (softcap_forward); the gradient is then
//            taken with respect to the raw logits: × (1 − (z / c)²), computed from z alone.
struct SoftmaxExtras {
  float z_loss = 0.0f;
  float softcap = 0.0f;
};

// dlogits (N, V) = (softmax(z) − onehot(target)) · scale; scale = dloss / N for the mean loss; with
// the extras above when set. Overwrites dlogits, which may alias logits.
void cross_entropy_backward(float* dlogits, const float* logits, const float* lse, const std::int32_t* targets,
                            std::int64_t N, std::int64_t V, float scale, const SoftmaxExtras& extras = {});

// x (n) = c · tanh(x / c), in place.
void softcap_forward(float* x, std::int64_t n, float c);

}  // namespace scratchlm
