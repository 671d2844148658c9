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
