#include "ops/layernorm.h"

#include <omp.h>

#include <cmath>
#include <vector>

namespace scratchlm {

void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* weight, const float* bias,
                       std::int64_t N, std::int64_t C, float eps) {
#pragma omp parallel for schedule(static)
  for (std::int64_t n = 0; n < N; ++n) {
    const float* xr = x + n * C;
    // Two passes in double: the mean, then the mean of squared deviations (no cancellation of
    // E[x²] − E[x]², which loses digits when |mean| ≫ std).
    double sum = 0.0;
    for (std::int64_t c = 0; c < C; ++c) sum += xr[c];
    const double mu = sum / static_cast<double>(C);
    double sum_sq = 0.0;
    for (std::int64_t c = 0; c < C; ++c) sum_sq += (xr[c] - mu) * (xr[c] - mu);
    // eps inside the square root, added to the variance (torch.nn.LayerNorm)
    const double r = 1.0 / std::sqrt(sum_sq / static_cast<double>(C) + eps);
    mean[n] = static_cast<float>(mu);
    rstd[n] = static_cast<float>(r);
    float* o = out + n * C;
    for (std::int64_t c = 0; c < C; ++c) {
      const float xhat = static_cast<float>((xr[c] - mu) * r);
      o[c] = xhat * weight[c] + (bias ? bias[c] : 0.0f);
    }
  }
}

void layernorm_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                        const float* weight, const float* mean, const float* rstd, std::int64_t N, std::int64_t C,
                        Accumulate dx_acc) {
#pragma omp parallel for schedule(static)
  for (std::int64_t n = 0; n < N; ++n) {
    const float* xr = x + n * C;
    const float* dy = dout + n * C;
    const double mu = mean[n], r = rstd[n];
    double sum_g = 0.0, sum_gx = 0.0;   // Σ g_k, Σ g_k x̂_k with g = weight ⊙ dy
    for (std::int64_t c = 0; c < C; ++c) {
      const double g = static_cast<double>(weight[c]) * dy[c];
      sum_g += g;
      sum_gx += g * (xr[c] - mu) * r;
    }
    const double mean_g = sum_g / static_cast<double>(C), mean_gx = sum_gx / static_cast<double>(C);
    float* d = dx + n * C;
    for (std::int64_t c = 0; c < C; ++c) {
      const double xhat = (xr[c] - mu) * r;
      const float v = static_cast<float>(r * (static_cast<double>(weight[c]) * dy[c] - mean_g - xhat * mean_gx));
      d[c] = dx_acc == Accumulate::yes ? d[c] + v : v;
    }
  }
  // dweight, dbias: each thread owns a range of columns and sums over all rows in order
  // (deterministic, as rmsnorm_backward's dgain).
#pragma omp parallel
  {
    const std::int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const std::int64_t c0 = C * t / threads, c1 = C * (t + 1) / threads;
    std::vector<double> acc_w(static_cast<std::size_t>(c1 - c0), 0.0), acc_b(acc_w.size(), 0.0);
    for (std::int64_t n = 0; n < N; ++n) {
      const float* xr = x + n * C;
      const float* dy = dout + n * C;
      const double mu = mean[n], r = rstd[n];
      for (std::int64_t c = c0; c < c1; ++c) {
        acc_w[c - c0] += static_cast<double>(dy[c]) * (xr[c] - mu) * r;
        acc_b[c - c0] += dy[c];
      }
    }
    for (std::int64_t c = c0; c < c1; ++c) {
      dweight[c] += static_cast<float>(acc_w[c - c0]);
      if (dbias) dbias[c] += static_cast<float>(acc_b[c - c0]);
    }
  }
}

}  // namespace scratchlm
