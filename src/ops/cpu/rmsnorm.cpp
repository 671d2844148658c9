#include "ops/rmsnorm.h"

#include <omp.h>

#include <cmath>
#include <vector>

namespace scratchlm {

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* gain, std::int64_t N, std::int64_t C,
                     float eps) {
#pragma omp parallel for schedule(static)
  for (std::int64_t n = 0; n < N; ++n) {
    const float* xr = x + n * C;
    double sum_sq = 0.0;
    for (std::int64_t c = 0; c < C; ++c) sum_sq += static_cast<double>(xr[c]) * xr[c];
    // eps inside the square root, added to the mean square (CS336, Llama)
    const float r = static_cast<float>(1.0 / std::sqrt(sum_sq / static_cast<double>(C) + eps));
    rstd[n] = r;
    float* o = out + n * C;
    for (std::int64_t c = 0; c < C; ++c) o[c] = xr[c] * r * gain[c];
  }
}

void rmsnorm_backward(float* dx, float* dgain, const float* dout, const float* x, const float* gain,
                      const float* rstd, std::int64_t N, std::int64_t C, Accumulate dx_acc) {
#pragma omp parallel for schedule(static)
  for (std::int64_t n = 0; n < N; ++n) {
    const float* xr = x + n * C;
    const float* dy = dout + n * C;
    const double r = rstd[n];
    double dot = 0.0;   // Σ_k g_k dy_k x_k
    for (std::int64_t c = 0; c < C; ++c) dot += static_cast<double>(gain[c]) * dy[c] * xr[c];
    const double k = dot * r * r * r / static_cast<double>(C);
    float* d = dx + n * C;
    for (std::int64_t c = 0; c < C; ++c) {
      const float v = static_cast<float>(r * gain[c] * dy[c] - xr[c] * k);
      d[c] = dx_acc == Accumulate::yes ? d[c] + v : v;
    }
  }
  // dgain: each thread owns a range of columns and sums over all rows in order (deterministic).
#pragma omp parallel
  {
    const std::int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const std::int64_t c0 = C * t / threads, c1 = C * (t + 1) / threads;
    std::vector<double> acc(static_cast<std::size_t>(c1 - c0), 0.0);
    for (std::int64_t n = 0; n < N; ++n) {
      const float* xr = x + n * C;
      const float* dy = dout + n * C;
      const double r = rstd[n];
      for (std::int64_t c = c0; c < c1; ++c) acc[c - c0] += static_cast<double>(dy[c]) * xr[c] * r;
    }
    for (std::int64_t c = c0; c < c1; ++c) dgain[c] += static_cast<float>(acc[c - c0]);
  }
}

}  // namespace scratchlm
