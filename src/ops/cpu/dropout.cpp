// Dropout on the CPU: one hash per element (ops/dropout.h), OpenMP over the elements.
#include "ops/dropout.h"

namespace scratchlm {

void dropout_forward(float* out, const float* x, std::int64_t n, const Dropout& d) {
  const std::uint64_t threshold = d.threshold();
  const float scale = d.scale();
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i)
    out[i] = dropout_keep(d.seed, d.site, static_cast<std::uint64_t>(i), threshold) ? x[i] * scale : 0.0f;
}

}  // namespace scratchlm
