#include "ops/cross_entropy.h"

#include <cmath>

namespace scratchlm {
namespace {

// log Σ exp(row), stable: subtract the maximum first, sum in double.
double row_lse(const float* row, std::int64_t V) {
  float max = row[0];
  for (std::int64_t v = 1; v < V; ++v) max = row[v] > max ? row[v] : max;
  double sum = 0.0;
  for (std::int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v]) - max);
  return max + std::log(sum);
}

}  // namespace

void softmax_forward(float* out, const float* x, std::int64_t N, std::int64_t V) {
#pragma omp parallel for schedule(static)
  for (std::int64_t n = 0; n < N; ++n) {
    const double lse = row_lse(x + n * V, V);
    for (std::int64_t v = 0; v < V; ++v) out[n * V + v] = static_cast<float>(std::exp(x[n * V + v] - lse));
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
                            std::int64_t N, std::int64_t V, float scale) {
#pragma omp parallel for schedule(static)
  for (std::int64_t n = 0; n < N; ++n) {
    const float* z = logits + n * V;
    float* d = dlogits + n * V;
    for (std::int64_t v = 0; v < V; ++v) d[v] = std::exp(z[v] - lse[n]) * scale;
    d[targets[n]] -= scale;
  }
}

}  // namespace scratchlm
