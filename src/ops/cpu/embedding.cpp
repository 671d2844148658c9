#include "ops/embedding.h"

#include <omp.h>

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

}  // namespace scratchlm
