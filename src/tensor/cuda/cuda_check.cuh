// Checks for every CUDA runtime and cuBLAS call (the third error tier of util/error.h): a failed
// call throws scratchlm::Error naming the expression, the file and line, and CUDA's own message.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "tensor/bf16.h"
#include "util/error.h"

#define SLM_CUDA_CHECK(expr)                                                                      \
  do {                                                                                            \
    const cudaError_t slm_err_ = (expr);                                                          \
    if (slm_err_ != cudaSuccess)                                                                  \
      ::scratchlm::fail("CUDA error at ", __FILE__, ":", __LINE__, ": ", #expr, ": ",             \
                        cudaGetErrorString(slm_err_));                                            \
  } while (0)

// After a kernel launch: launch-configuration errors show at once, execution errors at the next sync.
#define SLM_CUDA_LAUNCH_CHECK() SLM_CUDA_CHECK(cudaGetLastError())

#define SLM_CUBLAS_CHECK(expr)                                                                    \
  do {                                                                                            \
    const cublasStatus_t slm_st_ = (expr);                                                        \
    if (slm_st_ != CUBLAS_STATUS_SUCCESS)                                                         \
      ::scratchlm::fail("cuBLAS error at ", __FILE__, ":", __LINE__, ": ", #expr, ": ",           \
                        cublasLtGetStatusString(slm_st_));                                          \
  } while (0)

namespace scratchlm {

// The storage type as device code sees it: Bf16 is CUDA's __nv_bfloat16 (same bits).
template <typename T> struct DeviceType { using type = T; };
template <> struct DeviceType<Bf16> { using type = __nv_bfloat16; };
template <typename T> using device_t = typename DeviceType<T>::type;
template <typename T> device_t<T>* dev(T* p) { return reinterpret_cast<device_t<T>*>(p); }
template <typename T> const device_t<T>* dev(const T* p) { return reinterpret_cast<const device_t<T>*>(p); }

// Element access for kernels templated on the storage type (float or __nv_bfloat16).
__device__ __forceinline__ float load_f(const float* p) { return *p; }
__device__ __forceinline__ float load_f(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void store_f(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_f(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

}  // namespace scratchlm
