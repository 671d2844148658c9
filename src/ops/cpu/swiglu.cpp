#include "ops/swiglu.h"

#include "ops/cpu/fast_exp.h"

namespace scratchlm {

void swiglu_forward(float* h, const float* a, const float* b, std::int64_t n) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const float s = fast_sigmoid(a[i]);
    h[i] = a[i] * s * b[i];
  }
}

void swiglu_backward(float* da, float* db, const float* dh, const float* a, const float* b, std::int64_t n) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const float ai = a[i], bi = b[i];   // read before writing: da, db may alias a, b
    const float s = fast_sigmoid(ai);
    const float silu = ai * s;
    da[i] = dh[i] * bi * s * (1.0f + ai * (1.0f - s));
    db[i] = dh[i] * silu;
  }
}

}  // namespace scratchlm
