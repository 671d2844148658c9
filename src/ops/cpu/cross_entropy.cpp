#include "ops/cross_entropy.h"

#include <cmath>

#include "ops/cpu/fast_exp.h"

namespace scratchlm {
namespace {

// log Σ exp(row), stable: subtract the maximum first, sum in double.
double row_lse(const float* row, std::int64_t V) {
  float max = row[0];
  for (std::int64_t v = 1; v < V; ++v) max = row[v] > max ? row[v] : max;
  double sum = 0.0;   // each exp in float (z − max ≤ 0, so no overflow), the sum in double
#pragma omp simd reduction(+ : sum)
  for (std::int64_t v = 0; v < V; ++v) sum += fast_exp(row[v] - max);
  return max + std::log(sum);
}

}  // namespace

void softmax_forward(float* out, const float* x, std::int64_t N, std::int64_t V) {
#pragma omp parallel for schedule(static)
  for (std::int64_t n = 0; n < N; ++n) {
    const double lse = row_lse(x + n * V, V);
    // x − lse in double: lse rounded to float would cost up to half an ulp of |lse| in every exponent
    for (std::int64_t v = 0; v < V; ++v) out[n * V + v] = fast_exp(static_cast<float>(x[n * V + v] - lse));
  }
}

double cross_entropy_forward(float* losses, float* lse, const float* logits, const std::int32_t* targets,
                             std::int64_t N, std::int64_t V) {
#pragma omp parallel for schedule(static)
  for (std::int64_t n = 0; n < N; ++n) {
    const double l = row_lse(logits + n * V, V);
    lse[n] = static_cast<float>(l);
    losses[n] = static_cast<float>(l - logits[n * V + targets[n]]);
  }
  double sum = 0.0;   // in row order: deterministic
  for (std::int64_t n = 0; n < N; ++n) sum += losses[n];
  return sum / static_cast<double>(N);
}

void cross_entropy_backward(float* dlogits, const float* logits, const float* lse, const std::int32_t* targets,
                            std::int64_t N, std::int64_t V, float scale, const SoftmaxExtras& extras) {
  if (extras.z_loss == 0.0f && extras.softcap == 0.0f) {   // the plain case, vectorized
#pragma omp parallel for schedule(static)
    for (std::int64_t n = 0; n < N; ++n) {
      const float* z = logits + n * V;
      float* d = dlogits + n * V;
      const float l = lse[n];
      for (std::int64_t v = 0; v < V; ++v) d[v] = fast_exp(z[v] - l) * scale;
      d[targets[n]] -= scale;
    }
    return;
  }
#pragma omp parallel for schedule(static)
  for (std::int64_t n = 0; n < N; ++n) {
    const float* z = logits + n * V;
    float* d = dlogits + n * V;
    const double l = lse[n], p_scale = 1.0 + 2.0 * extras.z_loss * l;
    for (std::int64_t v = 0; v < V; ++v) {
      const double zv = z[v];   // read before d[v] (which may alias it) is written
      double g = std::exp(zv - l) * p_scale - (v == targets[n] ? 1.0 : 0.0);
      if (extras.softcap != 0.0f) g *= 1.0 - (zv / extras.softcap) * (zv / extras.softcap);
      d[v] = static_cast<float>(g * scale);
    }
  }
}

void softcap_forward(float* x, std::int64_t n, float c) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(c * std::tanh(static_cast<double>(x[i]) / c));
}

}  // namespace scratchlm
