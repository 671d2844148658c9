// Matrix products through OpenBLAS's cblas_sgemm (fp32 in, fp32 accumulate).
#include "ops/linear.h"

#include <cblas.h>

#include <cstdlib>

extern "C" char* openblas_get_corename(void);
extern "C" char* openblas_get_config(void);

namespace scratchlm {
namespace {

// OpenBLAS picks its kernels from the CPU model at load time, and a release older than the CPU
// falls back to its generic SSE3 ("Prescott") kernels: Debian 12's 0.3.21 does so on Sapphire and
// Emerald Rapids Xeons, where its sgemm then runs 5.6x slower (38 against 213 GFLOP/s on two cores,
// bench/train_cpu). Before OpenBLAS's own initialiser runs (constructor priority 101 runs before
// the default), name the kernels from the instruction set instead, through its documented
// OPENBLAS_CORETYPE variable: SkylakeX for AVX-512, Haswell for AVX2 + FMA. A value the user set
// is left alone.
__attribute__((constructor(101))) void choose_openblas_kernels() {
  if (std::getenv("OPENBLAS_CORETYPE")) return;
  __builtin_cpu_init();
  const char* core = nullptr;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    core = "SkylakeX";
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    core = "Haswell";
  if (core) setenv("OPENBLAS_CORETYPE", core, 0);
}

}  // namespace

std::string blas_description() { return std::string(openblas_get_config()) + ", kernels " + openblas_get_corename(); }

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

void linear_forward(float* out, const float* x, const float* w, const float* bias, std::int64_t N, std::int64_t Din,
                    std::int64_t Dout) {
  linear_forward(out, x, w, N, Din, Dout);
  if (!bias) return;
#pragma omp parallel for schedule(static)
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t o = 0; o < Dout; ++o) out[n * Dout + o] += bias[o];
}

void linear_backward(float* dx, float* dw, float* dbias, const float* dout, const float* x, const float* w,
                     std::int64_t N, std::int64_t Din, std::int64_t Dout, Accumulate dx_acc) {
  linear_backward(dx, dw, dout, x, w, N, Din, Dout, dx_acc);
  if (!dbias) return;
  // Each output column summed over the rows in order, in double (deterministic at any thread count).
#pragma omp parallel for schedule(static)
  for (std::int64_t o = 0; o < Dout; ++o) {
    double s = 0.0;
    for (std::int64_t n = 0; n < N; ++n) s += dout[n * Dout + o];
    dbias[o] += static_cast<float>(s);
  }
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
