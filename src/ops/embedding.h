// Token embedding: a row lookup. out[n] = weight[ids[n]].
#pragma once

#include "ops/common.h"

namespace scratchlm {

// out (N, C); ids (N), each in [0, V) (checked by the caller at the data boundary); weight (V, C)
void embedding_forward(float* out, const std::int32_t* ids, const float* weight, std::int64_t N, std::int64_t C);

// dweight (V, C) += scatter of dout (N, C) rows to ids: accumulates.
void embedding_backward(float* dweight, const float* dout, const std::int32_t* ids, std::int64_t N, std::int64_t C);

}  // namespace scratchlm
