#include "train/optimizer.h"

#include <cmath>

namespace scratchlm {

void adamw_step(float* params, const float* grads, AdamWState& state, const ParamLayout& layout, double lr,
                const AdamWOptions& opt) {
  state.step += 1;
  const double bias1 = 1.0 - std::pow(opt.beta1, static_cast<double>(state.step));
  const double bias2 = 1.0 - std::pow(opt.beta2, static_cast<double>(state.step));
  // PyTorch (single-tensor path, fp32): step_size = lr / bias1; denom = sqrt(v) / sqrt(bias2) + eps
  const float step_size = static_cast<float>(lr / bias1);
  const float bias2_sqrt = static_cast<float>(std::sqrt(bias2));
  // 1 − β in double, rounded once (as torch does): 1.0f − (float)0.999 would be off by 200 roundings
  const float b1 = static_cast<float>(opt.beta1), b2 = static_cast<float>(opt.beta2), eps = static_cast<float>(opt.eps);
  const float one_minus_b1 = static_cast<float>(1.0 - opt.beta1), one_minus_b2 = static_cast<float>(1.0 - opt.beta2);
  for (const ParamSpec& spec : layout.specs) {
    const bool decay = opt.weight_decay != 0.0 && (opt.decay_norm_gains || !spec.is_gain_or_bias);
    const float shrink = decay ? static_cast<float>(1.0 - lr * opt.weight_decay) : 1.0f;
    float* p = params + spec.offset;
    const float* g = grads + spec.offset;
    float* m = state.m.data() + spec.offset;
    float* v = state.v.data() + spec.offset;
    const std::int64_t n = spec.numel();
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) {
      p[i] *= shrink;
      m[i] = b1 * m[i] + one_minus_b1 * g[i];
      v[i] = b2 * v[i] + one_minus_b2 * g[i] * g[i];
      const float denom = std::sqrt(v[i]) / bias2_sqrt + eps;
      p[i] -= step_size * m[i] / denom;
    }
  }
}

double cosine_lr(std::int64_t t, double lr_max, double lr_min, std::int64_t warmup, std::int64_t cycle) {
  if (t < warmup) return lr_max * static_cast<double>(t) / static_cast<double>(warmup);
  if (t <= cycle) {
    if (cycle == warmup) return lr_max;
    const double progress = static_cast<double>(t - warmup) / static_cast<double>(cycle - warmup);
    return lr_min + 0.5 * (1.0 + std::cos(progress * M_PI)) * (lr_max - lr_min);
  }
  return lr_min;
}

double global_norm(const float* grads, std::int64_t n) {
  // Fixed-size blocks summed in order, so the result does not depend on the thread count.
  constexpr std::int64_t kBlock = 1 << 16;
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<std::size_t>(blocks), 0.0);
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < blocks; ++b) {
    double s = 0.0;
    for (std::int64_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) s += static_cast<double>(grads[i]) * grads[i];
    partial[b] = s;
  }
  double total = 0.0;
  for (double s : partial) total += s;
  return std::sqrt(total);
}

double clip_grad_norm(float* grads, std::int64_t n, double max_norm) {
  const double norm = global_norm(grads, n);
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) {
    const float c = static_cast<float>(coef);
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) grads[i] *= c;
  }
  return norm;
}

}  // namespace scratchlm
