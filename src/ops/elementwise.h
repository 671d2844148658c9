// Small elementwise helpers used by the model: the residual add and zeroing.
#pragma once

#include <cstdint>
#include <cstring>

namespace scratchlm {

// y (n) += x (n)
inline void add_into(float* y, const float* x, std::int64_t n) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) y[i] += x[i];
}

inline void zero(float* x, std::int64_t n) { std::memset(x, 0, sizeof(float) * static_cast<std::size_t>(n)); }

}  // namespace scratchlm
