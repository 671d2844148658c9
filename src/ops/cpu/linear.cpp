// Matrix products through OpenBLAS's cblas_sgemm (fp32 in, fp32 accumulate).
#include "ops/linear.h"

#include <cblas.h>

namespace scratchlm {

void gemm(float* out, std::int64_t ldo, const float* a, std::int64_t lda, Transpose ta, const float* b,
          std::int64_t ldb, Transpose tb, std::int64_t M, std::int64_t N, std::int64_t K, float alpha,
          Accumulate acc) {
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, ta == Transpose::yes ? CblasTrans : CblasNoTrans,
              tb == Transpose::yes ? CblasTrans : CblasNoTrans, static_cast<blasint>(M), static_cast<blasint>(N),
              static_cast<blasint>(K), alpha, a, static_cast<blasint>(lda), b, static_cast<blasint>(ldb),
              acc == Accumulate::yes ? 1.0f : 0.0f, out, static_cast<blasint>(ldo));
}

void linear_forward(float* out, const float* x, const float* w, std::int64_t N, std::int64_t Din,
                    std::int64_t Dout) {
  // out (N, Dout) = x (N, Din) · wᵀ, w stored (Dout, Din)
  gemm(out, Dout, x, Din, Transpose::no, w, Din, Transpose::yes, N, Dout, Din, 1.0f, Accumulate::no);
}

void linear_backward(float* dx, float* dw, const float* dout, const float* x, const float* w, std::int64_t N,
                     std::int64_t Din, std::int64_t Dout, Accumulate dx_acc) {
  // dx (N, Din) = dout (N, Dout) · w (Dout, Din)
  if (dx) gemm(dx, Din, dout, Dout, Transpose::no, w, Din, Transpose::no, N, Din, Dout, 1.0f, dx_acc);
  // dw (Dout, Din) += doutᵀ (Dout, N) · x (N, Din)
  gemm(dw, Din, dout, Dout, Transpose::yes, x, Din, Transpose::no, Dout, Din, N, 1.0f, Accumulate::yes);
}

}  // namespace scratchlm

#include <chrono>
#include <vector>

namespace scratchlm {

double measure_sgemm_flops(double seconds) {
  const std::int64_t n = 1024;
  std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n);
  linear_forward(c.data(), a.data(), b.data(), n, n, n);   // warm up threads and caches
  const auto start = std::chrono::steady_clock::now();
  std::int64_t reps = 0;
  double elapsed = 0;
  do {
    linear_forward(c.data(), a.data(), b.data(), n, n, n);
    ++reps;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  } while (elapsed < seconds);
  return 2.0 * n * n * n * static_cast<double>(reps) / elapsed;
}

}  // namespace scratchlm
