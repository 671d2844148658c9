// cuBLASLt behind GemmContext (see gemm_cuda.h). cuBLASLt is column-major; a row-major D = op(A)·op(B)
// is the column-major Dᵀ = op(B)ᵀ·op(A)ᵀ, so the operands are passed swapped, each with its row-major
// storage read as the column-major transpose.
#include <map>
#include <tuple>

#include "ops/cuda/gemm_cuda.h"
#include "tensor/cuda/cuda_check.cuh"

namespace scratchlm {
namespace {

constexpr std::size_t kWorkspaceBytes = 32u << 20;

cudaDataType_t cuda_type(GpuType t) { return t == GpuType::f32 ? CUDA_R_32F : CUDA_R_16BF; }

// The largest power of two (up to 256) dividing the address: cuBLASLt's heuristic must know it, since
// an algorithm chosen for aligned operands may not run on less aligned ones (views into the arenas).
std::uint32_t alignment(const void* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t align = 256;
  while (align > 1 && a % align != 0) align /= 2;
  return align;
}

// One cuBLASLt matrix layout: `rows` × `cols` column-major with leading dimension ld.
struct Layout {
  cublasLtMatrixLayout_t handle = nullptr;
  Layout(GpuType t, std::int64_t rows, std::int64_t cols, std::int64_t ld) {
    SLM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&handle, cuda_type(t), static_cast<std::uint64_t>(rows),
                                                static_cast<std::uint64_t>(cols), ld));
  }
  ~Layout() { cublasLtMatrixLayoutDestroy(handle); }
  Layout(const Layout&) = delete;
};

}  // namespace

struct GemmContext::Impl {
  cublasLtHandle_t handle = nullptr;
  GpuBuffer workspace{static_cast<std::int64_t>(kWorkspaceBytes)};
  // Heuristic choice per (shape, types, beta != 0, C separate).
  using Key = std::tuple<std::int64_t, std::int64_t, std::int64_t, int, int, std::int64_t, std::int64_t, std::int64_t,
                         int, int, bool, std::uint32_t, std::uint32_t, std::uint32_t, std::uint32_t>;
  std::map<Key, cublasLtMatmulAlgo_t> algos;
};

GemmContext::GemmContext() : impl_(std::make_unique<Impl>()) { SLM_CUBLAS_CHECK(cublasLtCreate(&impl_->handle)); }

GemmContext::~GemmContext() {
  if (impl_ && impl_->handle) cublasLtDestroy(impl_->handle);
}

void GemmContext::gemm(void* D, GpuType d_type, const void* A, const void* B, GpuType ab_type, const GemmShape& s,
                       float alpha, float beta, const void* C, CUstream_st* stream) {
  if (s.M == 0 || s.N == 0) return;
  // Column-major problem: Dᵀ (N, M) = X (N, K) · Y (K, M) with X = op(B)ᵀ from B's storage, Y = op(A)ᵀ.
  const cublasOperation_t op_x = s.tb == Transpose::no ? CUBLAS_OP_N : CUBLAS_OP_T;
  const cublasOperation_t op_y = s.ta == Transpose::no ? CUBLAS_OP_N : CUBLAS_OP_T;
  // B's storage read column-major: (N, K) when not transposed, else (K, N).
  Layout x_layout(ab_type, s.tb == Transpose::no ? s.N : s.K, s.tb == Transpose::no ? s.K : s.N, s.ldb);
  Layout y_layout(ab_type, s.ta == Transpose::no ? s.K : s.M, s.ta == Transpose::no ? s.M : s.K, s.lda);
  Layout d_layout(d_type, s.N, s.M, s.ldd);

  cublasLtMatmulDesc_t desc = nullptr;
  SLM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  SLM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_x, sizeof op_x));
  SLM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_y, sizeof op_y));

  const void* c_ptr = C ? C : D;
  const std::uint32_t align_x = alignment(B), align_y = alignment(A), align_c = alignment(c_ptr), align_d = alignment(D);
  const Impl::Key key{s.M, s.N, s.K, static_cast<int>(s.ta), static_cast<int>(s.tb), s.lda, s.ldb, s.ldd,
                      static_cast<int>(d_type), static_cast<int>(ab_type), beta != 0.0f, align_x, align_y, align_c,
                      align_d};
  auto it = impl_->algos.find(key);
  if (it == impl_->algos.end()) {
    cublasLtMatmulPreference_t pref = nullptr;
    SLM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const std::uint64_t ws = kWorkspaceBytes;
    SLM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                          sizeof ws));
    // Split-K reductions only in deterministic schemes (no atomics).
    const std::uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_INPLACE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE |
                                  CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;
    SLM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes,
                                                          sizeof schemes));
    for (auto [attr, value] : {std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_x},
                               std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_y},
                               std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_c},
                               std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_d}})
      SLM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof value));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    SLM_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(impl_->handle, desc, x_layout.handle, y_layout.handle,
                                                    d_layout.handle, d_layout.handle, pref, 1, &result, &found));
    cublasLtMatmulPreferenceDestroy(pref);
    if (found == 0) fail("cuBLASLt has no algorithm for a ", s.M, "x", s.N, "x", s.K, " product");
    it = impl_->algos.emplace(key, result.algo).first;
  }
  SLM_CUBLAS_CHECK(cublasLtMatmul(impl_->handle, desc, &alpha, B, x_layout.handle, A, y_layout.handle, &beta,
                                  c_ptr, d_layout.handle, D, d_layout.handle, &it->second,
                                  impl_->workspace.data(), kWorkspaceBytes, stream));
  cublasLtMatmulDescDestroy(desc);
}

}  // namespace scratchlm
