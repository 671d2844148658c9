// Token embedding: a row lookup, out[n] = weight[ids[n]]; and absolute position embeddings added
// to it (issue 6): a learned table or the fixed sinusoids of Vaswani et al. 2017.
#pragma once

#include <vector>

#include "ops/common.h"

namespace scratchlm {

// out (N, C); ids (N), each in [0, V) (checked by the caller at the data boundary); weight (V, C)
void embedding_forward(float* out, const std::int32_t* ids, const float* weight, std::int64_t N, std::int64_t C);

// dweight (V, C) += scatter of dout (N, C) rows to ids: accumulates.
void embedding_backward(float* dweight, const float* dout, const std::int32_t* ids, std::int64_t N, std::int64_t C);

// x (B, T, C) += table[positions[t]] in every sequence; table (P, C), positions (T) distinct, < P.
void position_add_forward(float* x, const float* table, const std::int32_t* positions, std::int64_t B,
                          std::int64_t T, std::int64_t C);
// dtable[positions[t]] += Σ_b dx[b, t] (the batch sum in double): accumulates.
void position_add_backward(float* dtable, const float* dx, const std::int32_t* positions, std::int64_t B,
                           std::int64_t T, std::int64_t C);

// (P, C): PE[p, 2i] = sin(p · 10000^(−2i/C)), PE[p, 2i+1] = cos(p · 10000^(−2i/C)), in double,
// stored as float. C even.
std::vector<float> sinusoidal_table(std::int64_t P, std::int64_t C);

}  // namespace scratchlm
