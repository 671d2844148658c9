// Matrix products. Linear weights are stored [d_out, d_in] (PyTorch's and CS336's convention), so
// y = x · Wᵀ (+ b). The CS336 model has no biases; the "bias" model field adds them to the blocks'
// Linears (the overloads taking a bias pointer; null means none).
#pragma once

#include <string>

#include "ops/common.h"

namespace scratchlm {

enum class Transpose { no, yes };

// out (M, N) = alpha · op(a) · op(b) [+ out], op(a) (M, K), op(b) (K, N); leading dimensions are
// the row lengths of the stored matrices (a stored (M, K) or, transposed, (K, M)). Single-threaded
// when called inside an OpenMP parallel region, all threads outside.
void gemm(float* out, std::int64_t ldo, const float* a, std::int64_t lda, Transpose ta, const float* b,
          std::int64_t ldb, Transpose tb, std::int64_t M, std::int64_t N, std::int64_t K, float alpha,
          Accumulate acc);

// out (N, Dout) = x (N, Din) · w (Dout, Din)ᵀ
void linear_forward(float* out, const float* x, const float* w, std::int64_t N, std::int64_t Din, std::int64_t Dout);

// dx (N, Din) = dout · w;  dw (Dout, Din) += doutᵀ · x  (dw always accumulates: gradients are
// zeroed once per step, and accumulation steps add into them).
void linear_backward(float* dx, float* dw, const float* dout, const float* x, const float* w, std::int64_t N,
                     std::int64_t Din, std::int64_t Dout, Accumulate dx_acc);

// With a bias: out (N, Dout) = x · wᵀ + bias, the bias (Dout) added to every row; bias null: none.
void linear_forward(float* out, const float* x, const float* w, const float* bias, std::int64_t N, std::int64_t Din,
                    std::int64_t Dout);
// As linear_backward, and dbias (Dout) += Σ_n dout[n] (column sums in double); dbias null: no bias.
void linear_backward(float* dx, float* dw, float* dbias, const float* dout, const float* x, const float* w,
                     std::int64_t N, std::int64_t Din, std::int64_t Dout, Accumulate dx_acc);

}  // namespace scratchlm

namespace scratchlm {

// This machine's sgemm throughput in FLOP/s (square 1024 products for about `seconds`, all
// threads): the peak that CPU MFU is reported against.
double measure_sgemm_flops(double seconds = 0.3);

// "OpenBLAS 0.3.21 ... , kernels SkylakeX": the BLAS and the kernels it runs.
std::string blas_description();

}  // namespace scratchlm
