// Matrix products on the GPU through cuBLASLt, in row-major terms:
//   D (M, N) = alpha · op(A) (M, K) · op(B) (K, N) + beta · C,   op(X) = X or Xᵀ,
// with A and B of one storage type (float, or Bf16 with fp32 accumulation) and C, D of another
// (float or Bf16). C defaults to D (beta = 1 accumulates into D); a separate C lets the residual
// add ride in the product's epilogue (x_mid = x_in + attn · Woᵀ). The fp32 path uses
// CUBLAS_COMPUTE_32F (true fp32, no TF32), the bf16 path CUBLAS_COMPUTE_32F with bf16 operands.
// Algorithms come from cuBLASLt's heuristic, cached per shape, restricted to deterministic
// reduction schemes so that results repeat bit for bit.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include "ops/linear.h"   // Transpose
#include "tensor/bf16.h"
#include "tensor/gpu_buffer.h"

struct CUstream_st;

namespace scratchlm {

enum class GpuType { f32, bf16 };
template <typename T> constexpr GpuType gpu_type_of();
template <> constexpr GpuType gpu_type_of<float>() { return GpuType::f32; }
template <> constexpr GpuType gpu_type_of<Bf16>() { return GpuType::bf16; }

struct GemmShape {
  std::int64_t M, N, K;
  Transpose ta, tb;
  std::int64_t lda, ldb, ldd;
};

class GemmContext {
 public:
  GemmContext();
  ~GemmContext();
  GemmContext(const GemmContext&) = delete;
  GemmContext& operator=(const GemmContext&) = delete;

  void gemm(void* D, GpuType d_type, const void* A, const void* B, GpuType ab_type, const GemmShape& s, float alpha,
            float beta, const void* C, CUstream_st* stream);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Typed entry point: gemm(ctx, D, A, B, shape, alpha, beta, stream[, C]).
template <typename TD, typename TAB>
void gemm(GemmContext& ctx, TD* D, const TAB* A, const TAB* B, const GemmShape& s, float alpha, float beta,
          CUstream_st* stream, const TD* C = nullptr) {
  ctx.gemm(D, gpu_type_of<TD>(), A, B, gpu_type_of<TAB>(), s, alpha, beta, C, stream);
}

// y (N, out) [+]= x (N, in) · Wᵀ, W (out, in) row-major — a Linear layer's forward.
inline GemmShape linear_shape(std::int64_t N, std::int64_t in, std::int64_t out) {
  return {N, out, in, Transpose::no, Transpose::yes, in, in, out};
}
// dx (N, in) = dy (N, out) · W.
inline GemmShape linear_dx_shape(std::int64_t N, std::int64_t in, std::int64_t out) {
  return {N, in, out, Transpose::no, Transpose::no, out, in, in};
}
// dW (out, in) += dyᵀ (out, N) · x (N, in).
inline GemmShape linear_dw_shape(std::int64_t N, std::int64_t in, std::int64_t out) {
  return {out, in, N, Transpose::yes, Transpose::no, out, in, in};
}

}  // namespace scratchlm
