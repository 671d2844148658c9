// The activations on the CPU: plain loops over the elements, value and derivative in double.
#include "ops/activation.h"

#include <cmath>

namespace scratchlm {
namespace {

double act_value(double x, Activation act) {
  switch (act) {
    case Activation::relu: return x > 0 ? x : 0.0;
    case Activation::relu2: return x > 0 ? x * x : 0.0;
    case Activation::silu: return x / (1.0 + std::exp(-x));
    case Activation::gelu: return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
  }
  return 0.0;
}

double act_derivative(double x, Activation act) {
  switch (act) {
    case Activation::relu: return x > 0 ? 1.0 : 0.0;
    case Activation::relu2: return x > 0 ? 2.0 * x : 0.0;
    case Activation::silu: {
      const double s = 1.0 / (1.0 + std::exp(-x));
      return s * (1.0 + x * (1.0 - s));
    }
    case Activation::gelu: {   // Φ(x) + x·φ(x)
      const double cdf = 0.5 * (1.0 + std::erf(x / std::sqrt(2.0)));
      const double pdf = std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI);
      return cdf + x * pdf;
    }
  }
  return 0.0;
}

}  // namespace

void activation_forward(float* out, const float* x, std::int64_t n, Activation act) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(act_value(x[i], act));
}

void activation_backward(float* dx, const float* dout, const float* x, std::int64_t n, Activation act) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) dx[i] = static_cast<float>(dout[i] * act_derivative(x[i], act));
}

void gated_forward(float* h, const float* a, const float* b, std::int64_t n, Activation act) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) h[i] = static_cast<float>(act_value(a[i], act) * b[i]);
}

void gated_backward(float* da, float* db, const float* dh, const float* a, const float* b, std::int64_t n,
                    Activation act) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const double x = a[i], y = b[i], g = dh[i];
    da[i] = static_cast<float>(g * y * act_derivative(x, act));
    db[i] = static_cast<float>(g * act_value(x, act));
  }
}

}  // namespace scratchlm
