// Causal attention on the GPU, for training (Tq == Tk == T), the CPU's ops/attention.h semantics:
//   S = Q Kᵀ / sqrt(D), keys after the query masked, P = softmax(S), out = P V; lse = row log-sum-exp
//   of S (natural log, fp32) saved for backward, which recomputes P.
// Layouts (N = B·T tokens, C = H·D):
//   qkv  (B, T, 3, H, D): the fused projection's output; q of head h at column h·D, k at C + h·D,
//        v at 2C + h·D of a row of 3C.
//   out, dout (B, T, H, D);  lse, delta (B, H, T) fp32;  dqkv like qkv, overwritten.
// Two implementations behind one entry point each:
//   attention_*_cuda<T>      plain CUDA cores, any D, T = float or Bf16 (the fp32 path and a check);
//   attention_*_mma          bf16 tensor cores (mma.sync), D in {32, 64, 128}.
#pragma once

#include <cstdint>

#include "tensor/bf16.h"

struct CUstream_st;

namespace scratchlm {

struct GpuAttentionShape {
  std::int64_t B = 0, T = 0, H = 0, D = 0;
};

template <typename T>
void attention_forward_cuda(T* out, float* lse, const T* qkv, const GpuAttentionShape& s, CUstream_st* stream);
// delta: scratch (B, H, T) for rowsum(dO ⊙ O).
template <typename T>
void attention_backward_cuda(T* dqkv, float* delta, const T* dout, const T* qkv, const T* out, const float* lse,
                             const GpuAttentionShape& s, CUstream_st* stream);

bool attention_mma_supported(std::int64_t D);
void attention_forward_mma(Bf16* out, float* lse, const Bf16* qkv, const GpuAttentionShape& s, CUstream_st* stream);
void attention_backward_mma(Bf16* dqkv, float* delta, const Bf16* dout, const Bf16* qkv, const Bf16* out,
                            const float* lse, const GpuAttentionShape& s, CUstream_st* stream);

}  // namespace scratchlm
