// Causal multi-head scaled dot-product attention, per (batch, query head):
//   S = Q Kᵀ / sqrt(D), masked where key position > query position, P = softmax(S), out = P V.
// Queries are (B, T, H, D) as the projections write them (heads interleaved per token), keys and
// values (B, T, Hkv, D). The row log-sum-exp of S is saved instead of P (B·H·T floats instead of
// B·H·T²), and backward recomputes P from it, as flash attention does.
//
// The variants (issue 6), each off by default:
//   - grouped-query attention: Hkv key/value heads, H % Hkv == 0; query head h reads kv head
//     h / (H / Hkv) (consecutive groups, as Hugging Face Llama's repeat_kv). Hkv = 1 is multi-query.
//   - a sliding window W: the query at position p sees the keys at p − W < j ≤ p. Scores outside
//     the window are never computed: queries go in blocks of rows, each against the band of keys
//     its rows can see (the causal mask alone is one block against every key, as before).
//   - a score soft-cap c (Gemma 2): s = q·k / sqrt(D) becomes c · tanh(s / c) before the mask and
//     the softmax; backward multiplies by its derivative 1 − (capped / c)².
//   - dropout on P after the softmax (inverted, ops/dropout.h), before P·V. The mask is the hash of
//     (seed, site, ((b·H + h)·Tq + i)·Tk + j), regenerated in backward, never stored; lse is that of
//     the undropped softmax.
#pragma once

#include "ops/common.h"
#include "ops/dropout.h"

namespace scratchlm {

struct AttentionDims {
  std::int64_t B = 0, H = 0;
  std::int64_t Hkv = 0;  // key/value heads; 0 means H (multi-head)
  std::int64_t D = 0;
  std::int64_t Tq = 0;   // queries per sequence
  std::int64_t Tk = 0;   // keys per sequence, Tk >= Tq: query i sits at position Tk − Tq + i
  // floats between consecutive sequences in k and v: Tk·Hkv·D when packed, capacity·Hkv·D for a
  // KV cache. 0 means packed.
  std::int64_t kv_batch_stride = 0;
  std::int64_t window = 0;   // 0: full causal; W ≥ 1: keys at p − W < j ≤ p
  float softcap = 0.0f;      // 0: off
  Dropout dropout{};         // on the probabilities; p = 0: off
};

// out (B, Tq, H, D), lse (B, H, Tq); q (B, Tq, H, D); k, v (B, Tk, Hkv, D) with kv_batch_stride.
void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const AttentionDims& dims);

// Training shapes only (Tq == Tk, packed). dq (B, T, H, D), dk, dv (B, T, Hkv, D) overwritten.
// With P̃ = P ⊙ mask / (1 − p) (P̃ = P without dropout), out = P̃ V and
//   dV = P̃ᵀ dO;  dP = (dO Vᵀ) ⊙ mask / (1 − p);  dS = P ⊙ (dP − Δ), Δ_i = Σ_j P_ij dP_ij = dO_i · O_i;
//   through the cap dS ⊙= 1 − (capped / c)²;  dQ = dS K / sqrt(D);  dK = dSᵀ Q / sqrt(D)
// A kv head's dK and dV sum over the query heads of its group.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, const AttentionDims& dims);

}  // namespace scratchlm
