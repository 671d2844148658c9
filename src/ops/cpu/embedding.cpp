#include "ops/embedding.h"

#include <omp.h>

#include <cmath>
#include <cstring>
#include <vector>

namespace scratchlm {

void embedding_forward(float* out, const std::int32_t* ids, const float* weight, std::int64_t N, std::int64_t C) {
#pragma omp parallel for schedule(static)
  for (std::int64_t n = 0; n < N; ++n)
    std::memcpy(out + n * C, weight + static_cast<std::int64_t>(ids[n]) * C, sizeof(float) * C);
}

void embedding_backward(float* dweight, const float* dout, const std::int32_t* ids, std::int64_t N, std::int64_t C) {
  // Each thread owns a range of columns and walks all rows in order, so repeated ids add up in the
  // same order whatever the thread count: the result is deterministic.
#pragma omp parallel
  {
    const std::int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const std::int64_t c0 = C * t / threads, c1 = C * (t + 1) / threads;
    for (std::int64_t n = 0; n < N; ++n) {
      float* row = dweight + static_cast<std::int64_t>(ids[n]) * C;
      const float* d = dout + n * C;
      for (std::int64_t c = c0; c < c1; ++c) row[c] += d[c];
    }
  }
}

void position_add_forward(float* x, const float* table, const std::int32_t* positions, std::int64_t B,
                          std::int64_t T, std::int64_t C) {
#pragma omp parallel for collapse(2) schedule(static)
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t < T; ++t) {
      float* row = x + (b * T + t) * C;
      const float* pe = table + static_cast<std::int64_t>(positions[t]) * C;
      for (std::int64_t c = 0; c < C; ++c) row[c] += pe[c];
    }
}

void position_add_backward(float* dtable, const float* dx, const std::int32_t* positions, std::int64_t B,
                           std::int64_t T, std::int64_t C) {
  // Each position is one row of dtable (the positions are distinct), so the rows are independent.
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < T; ++t) {
    float* row = dtable + static_cast<std::int64_t>(positions[t]) * C;
    for (std::int64_t c = 0; c < C; ++c) {
      double sum = 0.0;
      for (std::int64_t b = 0; b < B; ++b) sum += dx[(b * T + t) * C + c];
      row[c] += static_cast<float>(sum);
    }
  }
}

std::vector<float> sinusoidal_table(std::int64_t P, std::int64_t C) {
  std::vector<float> pe(static_cast<std::size_t>(P * C));
  for (std::int64_t p = 0; p < P; ++p)
    for (std::int64_t i = 0; 2 * i < C; ++i) {
      const double angle = static_cast<double>(p) * std::pow(10000.0, -static_cast<double>(2 * i) / static_cast<double>(C));
      pe[p * C + 2 * i] = static_cast<float>(std::sin(angle));
      pe[p * C + 2 * i + 1] = static_cast<float>(std::cos(angle));
    }
  return pe;
}

}  // namespace scratchlm
