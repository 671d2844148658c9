// The mixture-of-experts feed-forward on the GPU, forward and backward: the CPU's moe_forward and
// moe_backward (model.cpp; model.h states the spec) on device buffers, for one layer at a time.
// T is the working precision (float or Bf16) of what the matrix products read; the output, the
// gradient of the input and the parameter gradients are fp32.
//
// How it runs (every shape fixed by N, so a step can be captured in a CUDA graph: no host sync):
//   1. router logits (N, E) = x · W_routerᵀ, one product (fp32 out), then one thread per token:
//      softmax in double, the k most probable experts (strictly greater wins: ties go to the lower
//      index, as on the CPU), their weights renormalised over the selected;
//   2. a deterministic grouping of the N·k assignments by expert, in token order then slot order:
//      per-chunk expert counts (integer counts, order-free), an exclusive scan over the chunks, then
//      each assignment's rank among its expert's = its chunk's base + the earlier ones of the chunk;
//      rank < R keeps it (R below), else it is dropped (the CPU's capacity rule exactly);
//   3. experts run on R padded rows each: expert e owns rows [e·R, e·R + R) of the grouped buffers;
//      its first kept_e rows are its tokens' inputs, the rest zeros (they make zeros all the way and
//      add nothing to the weight gradients). Each expert is the dense SwiGLU feed-forward: [W1; W3]
//      up-projection (one product when w3 == w1 + Fe·C, as in the bf16 working copy; two into the
//      halves of ab otherwise, as the fp32 master arena lays them out), swiglu_forward_cuda, W2;
//   4. each token gathers its kept assignments' w·output rows in ascending expert order (the CPU's
//      order; no atomics), plus the residual if given; the shared experts are dense feed-forwards
//      over all N tokens whose W2 products accumulate onto the output;
//   5. the load-balancing loss aux = E·Σ_e f_e·P_e, written to the device (GpuMoeStats).
// The row bound R: with capacity (capacity_factor c > 0 and MoeCapacity::apply) R = min(N, ceil(c·N·k/E));
// dropless R = N (a token takes an expert at most once). The padded layout is what keeps the
// shapes static, the GShard/Switch choice: the cost is E·R rows per layer instead of N·k, i.e.
// E/k times the routed FLOPs when dropless, c times with a capacity. Set capacity_factor to bound
// it; a compact layout would need the counts on the host (a sync per layer, no graph).
// Supported: "ffn": "swiglu" without "bias" (moe_check_supported_cuda names the field otherwise).
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/params.h"
#include "ops/cuda/gemm_cuda.h"
#include "tensor/gpu_buffer.h"

struct CUstream_st;

namespace scratchlm {

// Fails (naming the field) unless the GPU mixture of experts implements this config's experts.
void moe_check_supported_cuda(const ModelConfig& c);

// Whether a forward applies moe.capacity_factor: training and evaluation passes do; `ignore` is
// dropless (the CPU's generation, with a KV cache).
enum class MoeCapacity { apply, ignore };

// The row bound R of each expert for a forward over N tokens (see above).
std::int64_t moe_expert_rows(const MoeConfig& moe, std::int64_t N, MoeCapacity capacity);

// One feed-forward's working-precision weights (device). When w3 == w1 + F·C, [W1; W3] is one
// (2F, C) matrix and the up-projection (and its input gradient) is one product.
template <typename T>
struct GpuFfnWeights {
  const T* w1 = nullptr;   // (F, C)
  const T* w3 = nullptr;   // (F, C)
  const T* w2 = nullptr;   // (C, F)
};
struct GpuFfnGrads {       // fp32, accumulated
  float* w1 = nullptr;     // (F, C)
  float* w3 = nullptr;     // (F, C)
  float* w2 = nullptr;     // (C, F)
};

// A layer's mixture: the router and E routed experts, S shared experts, all of width Fe.
template <typename T>
struct GpuMoeWeights {
  const T* router = nullptr;                     // (E, C)
  std::vector<GpuFfnWeights<T>> experts;         // E
  std::vector<GpuFfnWeights<T>> shared;          // S
};
struct GpuMoeGrads {
  float* router = nullptr;                       // (E, C)
  std::vector<GpuFfnGrads> experts, shared;      // E, S
};

// Layer l's views by parameter name (params.h: layers.{l}.ffn.router.weight, ffn.experts.{e}.w1 ..):
// weights at base + offset[i] for the layout's spec i (the fp32 arena: offset[i] = specs[i].offset;
// a working copy: its own offsets, with each w3 right after its w1 for the fused product);
// gradients in an fp32 arena laid out by `layout`.
template <typename T>
GpuMoeWeights<T> moe_weights_at(const T* base, const std::vector<std::int64_t>& offset, const ParamLayout& layout,
                                const ModelConfig& c, std::int64_t layer);
GpuMoeGrads moe_grads_at(float* arena, const ParamLayout& layout, const ModelConfig& c, std::int64_t layer);

// The device statistics of one forward (GpuMoeSaved::stats).
struct GpuMoeStats {
  double aux;             // E · Σ_e f_e · P_e
  std::int64_t dropped;   // assignments over capacity
};

// One layer's forward state, read by its backward. Sized for passes of up to max_tokens tokens with
// the given capacity rule (`ignore` also takes dropless passes, `apply` only capacity ones); elem is
// sizeof(T) (4 or 2). A = N·k assignments, R = moe_expert_rows(moe, max_tokens, largest) rows per expert.
struct GpuMoeSaved {
  GpuBuffer probs;        // (N, E) f32   router probabilities
  GpuBuffer expert;       // (N, k) i32   selected experts, most probable first
  GpuBuffer weight;       // (N, k) f32   their renormalised weights
  GpuBuffer row;          // (N, k) i32   each assignment's padded row e·R + rank; −1: dropped
  GpuBuffer assignment;   // (E·R) i32    each padded row's assignment n·k + j; −1: padding
  GpuBuffer tokens;       // (E) i32      assignments routed to each expert (capacity not applied)
  GpuBuffer stats;        // GpuMoeStats
  GpuBuffer ab, h;        // (E·R, 2Fe) T, (E·R, Fe) T   the experts' [a | b] and silu(a) ⊙ b
  GpuBuffer out;          // (E·R, C) f32 each padded row's expert output (before its weight)
  GpuBuffer shared_ab, shared_h;   // (S·N, 2Fe) T, (S·N, Fe) T
  std::int64_t N = 0, R = 0;       // of the last forward
  std::int64_t max_tokens = 0;
  GpuMoeSaved() = default;
  GpuMoeSaved(const ModelConfig& c, std::int64_t max_tokens, std::int64_t elem, MoeCapacity largest);
  std::int64_t bytes() const;
};

// Scratch shared by the layers (live only inside one moe_forward_cuda or moe_backward_cuda).
struct GpuMoeScratch {
  GpuBuffer chunk_counts;   // (ceil(N·k / 256), E) i32
  GpuBuffer in;             // (E·R, C) T    the gathered input rows
  // backward only (with_backward):
  GpuBuffer dout;           // (E·R, C) T    w · dy of each padded row
  GpuBuffer din;            // (E·R, C) f32  the gradient of each padded row's input
  GpuBuffer dh;             // (N, Fe) T     one expert's (R ≤ N rows) or one shared expert's
  GpuBuffer dab;            // (N, 2Fe) T
  GpuBuffer dweight;        // (N, k) f64    dL/dw of each assignment
  GpuBuffer dr;             // (N, E) T      the router logits' gradient
  std::int64_t max_tokens = 0;
  GpuMoeScratch() = default;
  GpuMoeScratch(const ModelConfig& c, std::int64_t max_tokens, std::int64_t elem, MoeCapacity largest,
                bool with_backward);
  std::int64_t bytes() const;
};

// y (N, C) f32 = [residual +] Σ_selected w_e · FFN_e(x) + Σ_s FFN_shared_s(x) over x (N, C) T.
// residual may be null or equal y (then the mixture is added onto y). `capacity`: whether
// moe.capacity_factor applies (MoeCapacity above).
// Fills `saved` for the backward and its stats (aux, dropped) on the device.
template <typename T>
void moe_forward_cuda(float* y, GpuMoeSaved& saved, GpuMoeScratch& scratch, const float* residual, const T* x,
                      const GpuMoeWeights<T>& w, const ModelConfig& c, std::int64_t N, MoeCapacity capacity,
                      GemmContext& gemm, CUstream_st* stream);

// dx (N, C) f32 overwritten with the gradient of the mixture's input x, from dy (N, C) T, the
// gradient of its output; the parameter gradients accumulate into g (fp32). aux_scale is the
// coefficient of this layer's aux in the differentiated objective: loss_scale · moe.aux_loss, as
// the CPU's model_backward passes it. Uses the state of the last moe_forward_cuda on the same x.
template <typename T>
void moe_backward_cuda(float* dx, const GpuMoeGrads& g, GpuMoeScratch& scratch, const GpuMoeSaved& saved, const T* dy,
                       const T* x, const GpuMoeWeights<T>& w, const ModelConfig& c, double aux_scale,
                       GemmContext& gemm, CUstream_st* stream);

// *sum += scale · aux of the last forward (device doubles; for the step's statistics in a graph).
void moe_add_aux_cuda(double* sum, const GpuMoeSaved& saved, double scale, CUstream_st* stream);

// The last forward's statistics on the host (waits for `stream`): for logging.
struct MoeLayerStats {
  double aux = 0;
  std::int64_t dropped = 0;
  std::vector<std::int64_t> expert_tokens;   // (E) assignments routed to each expert (before capacity)
};
MoeLayerStats moe_read_stats(const GpuMoeSaved& saved, const ModelConfig& c, CUstream_st* stream);

}  // namespace scratchlm
