// Causal multi-head scaled dot-product attention, per (batch, head):
//   S = Q Kᵀ / sqrt(D), masked where key position > query position, P = softmax(S), out = P V.
// Queries, keys and values are (B, T, H, D) as the projections write them (heads interleaved per
// token). The row log-sum-exp of S is saved instead of P (B·H·T floats instead of B·H·T²), and
// backward recomputes P from it, as flash attention does.
#pragma once

#include "ops/common.h"

namespace scratchlm {

struct AttentionDims {
  std::int64_t B = 0, H = 0, D = 0;
  std::int64_t Tq = 0;   // queries per sequence
  std::int64_t Tk = 0;   // keys per sequence, Tk >= Tq: query i sits at position Tk − Tq + i
  // floats between consecutive sequences in k and v: Tk·H·D when packed, capacity·H·D for a KV
  // cache. 0 means packed.
  std::int64_t kv_batch_stride = 0;
};

// out (B, Tq, H, D), lse (B, H, Tq); q (B, Tq, H, D); k, v (B, Tk, H, D) with kv_batch_stride.
void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const AttentionDims& dims);

// Training shapes only (Tq == Tk, packed). dq, dk, dv (B, T, H, D) overwritten.
//   dV = Pᵀ dO;  dP = dO Vᵀ;  dS = P ⊙ (dP − rowsum(dO ⊙ O));  dQ = dS K / sqrt(D);  dK = dSᵀ Q / sqrt(D)
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, const AttentionDims& dims);

}  // namespace scratchlm
