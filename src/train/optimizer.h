// AdamW, the learning-rate schedule and gradient clipping, over flat arenas that mirror the
// parameter table (model/params.h).
//
// AdamW exactly as torch.optim.AdamW (Loshchilov & Hutter 2019, PyTorch's order of operations):
//   θ ← θ − lr·λ·θ                                  (decoupled weight decay, first)
//   m ← β1 m + (1 − β1) g;   v ← β2 v + (1 − β2) g²
//   θ ← θ − lr · (m / (1 − β1^t)) / (sqrt(v / (1 − β2^t)) + ε)
// Every parameter is decayed by default, as CS336 and the reference trajectory do;
// decay_norm_gains = false exempts the norm gains (RMSNorm, LayerNorm, QK-norm) and every bias
// (Linear and LayerNorm): the parameters flagged is_gain_or_bias in the table.
#pragma once

#include <cstdint>
#include <vector>

#include "model/params.h"

namespace scratchlm {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  bool decay_norm_gains = true;
};

// m and v have the layout of the parameters; step counts updates done so far.
struct AdamWState {
  std::vector<float> m, v;
  std::int64_t step = 0;
  explicit AdamWState(std::int64_t n = 0) : m(static_cast<std::size_t>(n), 0.0f), v(static_cast<std::size_t>(n), 0.0f) {}
};

void adamw_step(float* params, const float* grads, AdamWState& state, const ParamLayout& layout, double lr,
                const AdamWOptions& opt);

// CS336's cosine schedule with linear warmup:
//   t < warmup:            lr_max · t / warmup
//   warmup ≤ t ≤ cycle:    lr_min + ½ (1 + cos(π (t − warmup) / (cycle − warmup))) (lr_max − lr_min)
//   t > cycle:             lr_min
double cosine_lr(std::int64_t t, double lr_max, double lr_min, std::int64_t warmup, std::int64_t cycle);

// The global L2 norm of all gradients (accumulated in double).
double global_norm(const float* grads, std::int64_t n);

// As torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) where that factor is below 1.
// Returns the norm before clipping.
double clip_grad_norm(float* grads, std::int64_t n, double max_norm);

}  // namespace scratchlm
