// Conventions shared by every op (see ../shared/STYLE.md):
//   - each op is a <op>_forward / <op>_backward pair of free functions with explicit buffers:
//     outputs first, then values saved for backward, then inputs, weights and sizes;
//   - an output either is overwritten or accumulated into, said by an Accumulate argument at the
//     call site (Accumulate::yes), never a bare bool;
//   - single-letter sizes: B batch, T tokens, C d_model, H heads, D d_head, F d_ff, V vocab,
//     N = B·T rows; every pointer's shape is written next to it, row-major;
//   - the CPU versions (ops/cpu/) are the spec: plain loops, long reductions in double, OpenMP over
//     independent rows, OpenBLAS for matrix products.
#pragma once

#include <cstdint>

namespace scratchlm {

enum class Accumulate { no, yes };

}  // namespace scratchlm
