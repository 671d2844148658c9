// The GPU mixture of experts (see moe_cuda.h): kernels for routing, grouping, gathering and
// combining, and the per-expert SwiGLU feed-forwards through the cuBLASLt wrapper. No floating-point
// atomics anywhere: every sum has a fixed order, so results repeat bit for bit.
#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "model/cuda/moe_cuda.h"
#include "ops/cuda/ops_cuda.h"
#include "tensor/cuda/cuda_check.cuh"

namespace scratchlm {

namespace {

constexpr int kChunk = 256;   // assignments per block of the grouping kernels

unsigned blocks(std::int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }
std::int64_t num_chunks(std::int64_t assignments) { return (assignments + kChunk - 1) / kChunk; }

// ---- routing ----

// probs (N, E) holds the router logits on entry and the probabilities on exit. One thread per token:
// the CPU's loops, in double, with the same tie rule (strictly greater wins, so the lower index).
__global__ void route_thread_per_token(float* probs, std::int32_t* expert, float* weight, std::int64_t N,
                                       std::int64_t E, std::int64_t k) {
  const std::int64_t n = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  float* p = probs + n * E;
  float max = p[0];
  for (std::int64_t e = 1; e < E; ++e) max = fmaxf(max, p[e]);
  double sum = 0.0;
  for (std::int64_t e = 0; e < E; ++e) sum += exp(static_cast<double>(p[e]) - static_cast<double>(max));
  for (std::int64_t e = 0; e < E; ++e)
    p[e] = static_cast<float>(exp(static_cast<double>(p[e]) - static_cast<double>(max)) / sum);
  std::int32_t* sel = expert + n * k;
  double selected = 0.0;
  for (std::int64_t j = 0; j < k; ++j) {
    std::int64_t best = -1;
    for (std::int64_t e = 0; e < E; ++e) {
      bool taken = false;
      for (std::int64_t i = 0; i < j; ++i) taken |= sel[i] == e;
      if (taken) continue;
      if (best < 0 || p[e] > p[best]) best = e;
    }
    sel[j] = static_cast<std::int32_t>(best);
    selected += p[best];
  }
  for (std::int64_t j = 0; j < k; ++j) weight[n * k + j] = static_cast<float>(p[sel[j]] / selected);
}

// ---- grouping: counts per chunk, a scan over chunks, ranks ----

// chunk_counts[chunk, e] = assignments of the chunk routed to e (integer atomics in shared memory:
// the count does not depend on their order).
__global__ void count_per_chunk(std::int32_t* chunk_counts, const std::int32_t* expert, std::int64_t A,
                                std::int64_t E) {
  extern __shared__ std::int32_t hist[];
  for (std::int64_t e = threadIdx.x; e < E; e += blockDim.x) hist[e] = 0;
  __syncthreads();
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(kChunk) + threadIdx.x;
  if (i < A) atomicAdd(&hist[expert[i]], 1);
  __syncthreads();
  for (std::int64_t e = threadIdx.x; e < E; e += blockDim.x) chunk_counts[blockIdx.x * E + e] = hist[e];
}

// One block: chunk_counts becomes each chunk's exclusive base per expert; tokens[e] the total;
// stats->dropped = A − Σ_e min(tokens[e], R).
__global__ void scan_chunks(std::int32_t* chunk_counts, std::int32_t* tokens, GpuMoeStats* stats,
                            std::int64_t chunks, std::int64_t E, std::int64_t R, std::int64_t A) {
  for (std::int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    std::int32_t base = 0;
    for (std::int64_t ch = 0; ch < chunks; ++ch) {
      const std::int32_t count = chunk_counts[ch * E + e];
      chunk_counts[ch * E + e] = base;
      base += count;
    }
    tokens[e] = base;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    std::int64_t kept = 0;
    for (std::int64_t e = 0; e < E; ++e) kept += tokens[e] < R ? tokens[e] : R;
    stats->dropped = A - kept;
  }
}

// Each assignment's rank among its expert's (token order, then slot order): its chunk's base plus
// the earlier assignments of the chunk to the same expert. rank < R keeps it at row e·R + rank.
__global__ void rank_assignments(std::int32_t* row, std::int32_t* assignment, const std::int32_t* expert,
                                 const std::int32_t* chunk_base, std::int64_t A, std::int64_t E, std::int64_t R) {
  __shared__ std::int32_t ids[kChunk];
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(kChunk) + threadIdx.x;
  ids[threadIdx.x] = i < A ? expert[i] : -1;
  __syncthreads();
  if (i >= A) return;
  const std::int32_t e = ids[threadIdx.x];
  std::int64_t rank = chunk_base[blockIdx.x * E + e];
  for (unsigned u = 0; u < threadIdx.x; ++u) rank += ids[u] == e;
  if (rank < R) {
    const std::int64_t r = e * R + rank;
    row[i] = static_cast<std::int32_t>(r);
    assignment[r] = static_cast<std::int32_t>(i);
  } else {
    row[i] = -1;
  }
}

// One block: aux = E · Σ_e (tokens_e / (N·k)) · (P_e / N), P_e = Σ_n probs[n, e] in double, each a
// fixed-order block reduction.
constexpr int kAuxThreads = 256;
__global__ void aux_loss_one_block(GpuMoeStats* stats, const float* probs, const std::int32_t* tokens, std::int64_t N,
                                   std::int64_t E, std::int64_t k) {
  __shared__ double part[kAuxThreads];
  double aux = 0.0;
  for (std::int64_t e = 0; e < E; ++e) {
    double P = 0.0;
    for (std::int64_t n = threadIdx.x; n < N; n += kAuxThreads) P += probs[n * E + e];
    part[threadIdx.x] = P;
    __syncthreads();
    for (int s = kAuxThreads / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
      __syncthreads();
    }
    aux += static_cast<double>(tokens[e]) / static_cast<double>(N * k) * (part[0] / static_cast<double>(N));
    __syncthreads();
  }
  if (threadIdx.x == 0) stats->aux = static_cast<double>(E) * aux;
}

// ---- gathers and combines ----

// in (rows, C): padded row r holds x[token of assignment[r]], or zeros for padding.
template <typename D>
__global__ void gather_rows(D* in, const D* x, const std::int32_t* assignment, std::int64_t rows, std::int64_t C,
                            std::int64_t k) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows * C) return;
  const std::int64_t r = i / C, col = i - r * C;
  const std::int32_t a = assignment[r];
  in[i] = a < 0 ? D(0.0f) : x[(a / k) * C + col];
}

// Backward's gathers: in as above, dout[r] = w[assignment] · dy[token] (zeros for padding).
template <typename D>
__global__ void gather_rows_and_dout(D* in, D* dout, const D* x, const D* dy, const std::int32_t* assignment,
                                     const float* weight, std::int64_t rows, std::int64_t C, std::int64_t k) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows * C) return;
  const std::int64_t r = i / C, col = i - r * C;
  const std::int32_t a = assignment[r];
  if (a < 0) {
    in[i] = D(0.0f);
    dout[i] = D(0.0f);
    return;
  }
  const std::int64_t at = (a / k) * C + col;
  in[i] = x[at];
  store_f(dout + i, weight[a] * load_f(dy + at));
}

// y[n, :] = [residual[n, :] +] Σ over n's kept assignments, in ascending expert order (the CPU's
// loop order), of [weight ·] rows[row, :]. weight null: 1. residual may alias y.
__global__ void combine_rows(float* y, const float* residual, const float* rows, const std::int32_t* expert,
                             const std::int32_t* row, const float* weight, std::int64_t N, std::int64_t C,
                             std::int64_t k) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= N * C) return;
  const std::int64_t n = i / C, col = i - n * C;
  const std::int32_t* sel = expert + n * k;
  float acc = 0.0f;
  std::int32_t prev = -1;
  for (std::int64_t step = 0; step < k; ++step) {   // the next expert above prev (experts are distinct)
    std::int64_t j = -1;
    for (std::int64_t t = 0; t < k; ++t)
      if (sel[t] > prev && (j < 0 || sel[t] < sel[j])) j = t;
    prev = sel[j];
    const std::int32_t r = row[n * k + j];
    if (r < 0) continue;   // dropped: adds nothing
    const float v = rows[static_cast<std::int64_t>(r) * C + col];
    acc += weight ? weight[n * k + j] * v : v;
  }
  y[i] = residual ? residual[i] + acc : acc;
}

// dweight[i] = dot(dy[token], out[row]) in double (0 for a dropped assignment): one warp each,
// lanes strided, then the fixed butterfly.
template <typename D>
__global__ void assignment_dweight(double* dweight, const D* dy, const float* out, const std::int32_t* row,
                                   std::int64_t A, std::int64_t C, std::int64_t k) {
  const std::int64_t i = (blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (i >= A) return;
  const std::int32_t r = row[i];
  double dot = 0.0;
  if (r >= 0) {
    const D* d = dy + (i / k) * C;
    const float* o = out + static_cast<std::int64_t>(r) * C;
    for (std::int64_t c = lane; c < C; c += 32) dot += static_cast<double>(load_f(d + c)) * o[c];
  }
  dot = warp_sum(dot);
  if (lane == 0) dweight[i] = dot;
}

// The router's gradient, one thread per token (the CPU's formula in double): with S = Σ_selected p,
//   dp_e = aux_scale·E·(tokens_e/(N·k))/N + [e = e_j] (dw_j − Σ_j dw_j·w_j) / S,
//   dr_e = p_e (dp_e − Σ_e p_e·dp_e).
template <typename D>
__global__ void router_backward_thread_per_token(D* dr, const float* probs, const std::int32_t* expert,
                                                 const float* weight, const double* dweight,
                                                 const std::int32_t* tokens, std::int64_t N, std::int64_t E,
                                                 std::int64_t k, double aux_scale) {
  const std::int64_t n = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  const float* p = probs + n * E;
  const std::int32_t* sel = expert + n * k;
  double selected = 0.0, weighted = 0.0;
  for (std::int64_t j = 0; j < k; ++j) {
    selected += p[sel[j]];
    weighted += dweight[n * k + j] * weight[n * k + j];
  }
  auto dp = [&](std::int64_t e) {
    double v = aux_scale * static_cast<double>(E) * (static_cast<double>(tokens[e]) / static_cast<double>(N * k)) /
               static_cast<double>(N);
    for (std::int64_t j = 0; j < k; ++j)
      if (sel[j] == e) v += (dweight[n * k + j] - weighted) / selected;
    return v;
  };
  double dot = 0.0;
  for (std::int64_t e = 0; e < E; ++e) dot += p[e] * dp(e);
  for (std::int64_t e = 0; e < E; ++e) store_f(dr + n * E + e, static_cast<float>(p[e] * (dp(e) - dot)));
}

__global__ void add_aux(double* sum, const GpuMoeStats* stats, double scale) { *sum += scale * stats->aux; }

// ---- one SwiGLU feed-forward on M rows ----

// ab (M, 2F) = [x W1ᵀ | x W3ᵀ], h (M, F) = silu(a) ⊙ b.
template <typename T>
void ffn_up(T* ab, T* h, const T* x, const GpuFfnWeights<T>& w, std::int64_t M, std::int64_t C, std::int64_t F,
            GemmContext& gemm, CUstream_st* s) {
  if (w.w3 == w.w1 + F * C) {
    scratchlm::gemm(gemm, ab, x, w.w1, linear_shape(M, C, 2 * F), 1.0f, 0.0f, s);
  } else {
    GemmShape half = linear_shape(M, C, F);
    half.ldd = 2 * F;
    scratchlm::gemm(gemm, ab, x, w.w1, half, 1.0f, 0.0f, s);
    scratchlm::gemm(gemm, ab + F, x, w.w3, half, 1.0f, 0.0f, s);
  }
  swiglu_forward_cuda(h, static_cast<const T*>(ab), M, F, s);
}

// From dout (M, C), the gradient of the feed-forward's output: dx (M, C) f32 (overwritten, or
// accumulated with dx_acc), and the weight gradients accumulated. dh, dab are scratch (M, F), (M, 2F).
template <typename T>
void ffn_backward(float* dx, const GpuFfnGrads& g, T* dh, T* dab, const T* dout, const T* x, const T* ab, const T* h,
                  const GpuFfnWeights<T>& w, std::int64_t M, std::int64_t C, std::int64_t F, Accumulate dx_acc,
                  GemmContext& gemm, CUstream_st* s) {
  const float beta = dx_acc == Accumulate::yes ? 1.0f : 0.0f;
  scratchlm::gemm(gemm, dh, dout, w.w2, linear_dx_shape(M, F, C), 1.0f, 0.0f, s);
  scratchlm::gemm(gemm, g.w2, dout, h, linear_dw_shape(M, F, C), 1.0f, 1.0f, s);
  swiglu_backward_cuda(dab, static_cast<const T*>(dh), ab, M, F, s);
  const T* dabc = dab;
  if (w.w3 == w.w1 + F * C) {   // dx = [da | db] · [W1; W3]
    scratchlm::gemm(gemm, dx, dabc, w.w1, linear_dx_shape(M, C, 2 * F), 1.0f, beta, s);
  } else {
    GemmShape half = linear_dx_shape(M, C, F);
    half.lda = 2 * F;
    scratchlm::gemm(gemm, dx, dabc, w.w1, half, 1.0f, beta, s);
    scratchlm::gemm(gemm, dx, dabc + F, w.w3, half, 1.0f, 1.0f, s);
  }
  GemmShape dw = linear_dw_shape(M, C, F);
  dw.lda = 2 * F;
  scratchlm::gemm(gemm, g.w1, dabc, x, dw, 1.0f, 1.0f, s);
  scratchlm::gemm(gemm, g.w3, dabc + F, x, dw, 1.0f, 1.0f, s);
}

}  // namespace

void moe_check_supported_cuda(const ModelConfig& c) {
  if (!c.is_moe()) fail("moe_forward_cuda: the model has no \"moe\" field");
  if (c.ffn != FfnKind::swiglu)
    fail("the GPU mixture of experts has SwiGLU experts only (model field \"ffn\": \"swiglu\"); this model sets "
         "\"ffn\": \"",
         ffn_name(c.ffn), "\"; train it on the CPU with --device cpu");
  if (c.bias)
    fail("the GPU mixture of experts has no expert biases (model field \"bias\": false); this model sets \"bias\": "
         "true; train it on the CPU with --device cpu");
  if (c.moe.top_k < 1 || c.moe.top_k > c.moe.num_experts)
    fail("model field \"moe\".\"top_k\" must be in 1 .. num_experts (", c.moe.num_experts, "), not ", c.moe.top_k);
  if (c.moe.d_ff_expert < 1) fail("model field \"moe\".\"d_ff_expert\" must be positive, not ", c.moe.d_ff_expert);
}

std::int64_t moe_expert_rows(const MoeConfig& moe, std::int64_t N, MoeCapacity capacity) {
  if (capacity == MoeCapacity::ignore || moe.capacity_factor <= 0) return N;
  // ceil(((c·N)·k)/E), evaluated left to right in double as on the CPU
  const auto limit = static_cast<std::int64_t>(std::ceil(moe.capacity_factor * static_cast<double>(N) *
                                                         static_cast<double>(moe.top_k) /
                                                         static_cast<double>(moe.num_experts)));
  return std::min(N, limit);
}

namespace {

// f(shared, prefix) for layer l's routed experts, then its shared experts, in table order.
template <class F>
void each_ffn(const ModelConfig& c, std::int64_t layer, F f) {
  const std::string p = "layers." + std::to_string(layer) + ".ffn.";
  for (std::int64_t e = 0; e < c.moe.num_experts; ++e) f(false, p + "experts." + std::to_string(e) + ".");
  for (std::int64_t e = 0; e < c.moe.num_shared; ++e) f(true, p + "shared_experts." + std::to_string(e) + ".");
}

std::string router_name(std::int64_t layer) { return "layers." + std::to_string(layer) + ".ffn.router.weight"; }

}  // namespace

template <typename T>
GpuMoeWeights<T> moe_weights_at(const T* base, const std::vector<std::int64_t>& offset, const ParamLayout& layout,
                                const ModelConfig& c, std::int64_t layer) {
  SLM_CHECK(offset.size() == layout.specs.size(), "moe_weights_at: an offset per parameter tensor");
  auto at = [&](const std::string& name) {
    const auto it = layout.index.find(name);
    SLM_CHECK(it != layout.index.end(), "no parameter named ", name);
    return base + offset[it->second];
  };
  GpuMoeWeights<T> w;
  w.router = at(router_name(layer));
  each_ffn(c, layer, [&](bool shared, const std::string& p) {
    (shared ? w.shared : w.experts).push_back({at(p + "w1.weight"), at(p + "w3.weight"), at(p + "w2.weight")});
  });
  return w;
}
template GpuMoeWeights<float> moe_weights_at<float>(const float*, const std::vector<std::int64_t>&, const ParamLayout&,
                                                    const ModelConfig&, std::int64_t);
template GpuMoeWeights<Bf16> moe_weights_at<Bf16>(const Bf16*, const std::vector<std::int64_t>&, const ParamLayout&,
                                                  const ModelConfig&, std::int64_t);

GpuMoeGrads moe_grads_at(float* arena, const ParamLayout& layout, const ModelConfig& c, std::int64_t layer) {
  auto at = [&](const std::string& name) { return arena + layout.find(name).offset; };
  GpuMoeGrads g;
  g.router = at(router_name(layer));
  each_ffn(c, layer, [&](bool shared, const std::string& p) {
    (shared ? g.shared : g.experts).push_back({at(p + "w1.weight"), at(p + "w3.weight"), at(p + "w2.weight")});
  });
  return g;
}

GpuMoeSaved::GpuMoeSaved(const ModelConfig& c, std::int64_t max_tokens_, std::int64_t elem, MoeCapacity largest)
    : max_tokens(max_tokens_) {
  moe_check_supported_cuda(c);
  const std::int64_t N = max_tokens, C = c.d_model, E = c.moe.num_experts, k = c.moe.top_k, Fe = c.moe.d_ff_expert,
                     S = c.moe.num_shared, R = moe_expert_rows(c.moe, N, largest);
  probs = GpuBuffer(N * E * 4);
  expert = GpuBuffer(N * k * 4);
  weight = GpuBuffer(N * k * 4);
  row = GpuBuffer(N * k * 4);
  assignment = GpuBuffer(E * R * 4);
  tokens = GpuBuffer(E * 4);
  stats = GpuBuffer(static_cast<std::int64_t>(sizeof(GpuMoeStats)));
  ab = GpuBuffer(E * R * 2 * Fe * elem);
  h = GpuBuffer(E * R * Fe * elem);
  out = GpuBuffer(E * R * C * 4);
  if (S > 0) {
    shared_ab = GpuBuffer(S * N * 2 * Fe * elem);
    shared_h = GpuBuffer(S * N * Fe * elem);
  }
}

std::int64_t GpuMoeSaved::bytes() const {
  std::int64_t sum = 0;
  for (const GpuBuffer* b : {&probs, &expert, &weight, &row, &assignment, &tokens, &stats, &ab, &h, &out, &shared_ab,
                             &shared_h})
    sum += b->bytes();
  return sum;
}

GpuMoeScratch::GpuMoeScratch(const ModelConfig& c, std::int64_t max_tokens_, std::int64_t elem, MoeCapacity largest,
                             bool with_backward)
    : max_tokens(max_tokens_) {
  moe_check_supported_cuda(c);
  const std::int64_t N = max_tokens, C = c.d_model, E = c.moe.num_experts, k = c.moe.top_k, Fe = c.moe.d_ff_expert,
                     R = moe_expert_rows(c.moe, N, largest);
  chunk_counts = GpuBuffer(num_chunks(N * k) * E * 4);
  in = GpuBuffer(E * R * C * elem);
  if (with_backward) {
    dout = GpuBuffer(E * R * C * elem);
    din = GpuBuffer(E * R * C * 4);
    dh = GpuBuffer(N * Fe * elem);
    dab = GpuBuffer(N * 2 * Fe * elem);
    dweight = GpuBuffer(N * k * 8);
    dr = GpuBuffer(N * E * elem);
  }
}

std::int64_t GpuMoeScratch::bytes() const {
  std::int64_t sum = 0;
  for (const GpuBuffer* b : {&chunk_counts, &in, &dout, &din, &dh, &dab, &dweight, &dr}) sum += b->bytes();
  return sum;
}

template <typename T>
void moe_forward_cuda(float* y, GpuMoeSaved& saved, GpuMoeScratch& scratch, const float* residual, const T* x,
                      const GpuMoeWeights<T>& w, const ModelConfig& c, std::int64_t N, MoeCapacity capacity,
                      GemmContext& gemm, CUstream_st* s) {
  const std::int64_t C = c.d_model, E = c.moe.num_experts, k = c.moe.top_k, Fe = c.moe.d_ff_expert, A = N * k;
  const std::int64_t R = moe_expert_rows(c.moe, N, capacity);
  SLM_CHECK(N >= 1 && N <= saved.max_tokens && N <= scratch.max_tokens, "moe_forward_cuda: ", N,
            " tokens, buffers for ", saved.max_tokens);
  // A dropless pass (R = N) needs buffers sized for one (MoeCapacity::ignore at construction).
  SLM_CHECK(E * R * 4 <= saved.assignment.bytes() && E * R * C * static_cast<std::int64_t>(sizeof(T)) <= scratch.in.bytes(),
            "moe_forward_cuda: a dropless pass over ", N, " tokens needs buffers sized for one");
  SLM_CHECK(static_cast<std::int64_t>(w.experts.size()) == E &&
                static_cast<std::int64_t>(w.shared.size()) == c.moe.num_shared,
            "moe_forward_cuda: weights for another number of experts");
  saved.N = N;
  saved.R = R;
  float* probs = saved.probs.as<float>();
  auto* expert = saved.expert.as<std::int32_t>();
  auto* weight = saved.weight.as<float>();
  auto* row = saved.row.as<std::int32_t>();
  auto* assignment = saved.assignment.as<std::int32_t>();
  auto* tokens = saved.tokens.as<std::int32_t>();
  auto* stats = saved.stats.as<GpuMoeStats>();
  auto* counts = scratch.chunk_counts.as<std::int32_t>();
  const std::int64_t chunks = num_chunks(A);

  // 1. routing
  scratchlm::gemm(gemm, probs, x, w.router, linear_shape(N, C, E), 1.0f, 0.0f, s);
  route_thread_per_token<<<blocks(N, 128), 128, 0, s>>>(probs, expert, weight, N, E, k);
  SLM_CUDA_LAUNCH_CHECK();
  // 2. grouping, capacity, the load-balancing loss
  count_per_chunk<<<static_cast<unsigned>(chunks), kChunk, static_cast<std::size_t>(E * 4), s>>>(counts, expert, A, E);
  SLM_CUDA_LAUNCH_CHECK();
  scan_chunks<<<1, 256, 0, s>>>(counts, tokens, stats, chunks, E, R, A);
  SLM_CUDA_LAUNCH_CHECK();
  SLM_CUDA_CHECK(cudaMemsetAsync(assignment, 0xff, static_cast<std::size_t>(E * R * 4), s));   // −1: padding
  rank_assignments<<<static_cast<unsigned>(chunks), kChunk, 0, s>>>(row, assignment, expert, counts, A, E, R);
  SLM_CUDA_LAUNCH_CHECK();
  aux_loss_one_block<<<1, kAuxThreads, 0, s>>>(stats, probs, tokens, N, E, k);
  SLM_CUDA_LAUNCH_CHECK();
  // 3. the experts on their padded rows
  T* in = scratch.in.as<T>();
  gather_rows<<<blocks(E * R * C, 256), 256, 0, s>>>(dev(in), dev(x), assignment, E * R, C, k);
  SLM_CUDA_LAUNCH_CHECK();
  T* ab = saved.ab.as<T>();
  T* h = saved.h.as<T>();
  float* out = saved.out.as<float>();
  for (std::int64_t e = 0; e < E; ++e) {
    T* ab_e = ab + e * R * 2 * Fe;
    T* h_e = h + e * R * Fe;
    ffn_up(ab_e, h_e, static_cast<const T*>(in + e * R * C), w.experts[e], R, C, Fe, gemm, s);
    scratchlm::gemm(gemm, out + e * R * C, static_cast<const T*>(h_e), w.experts[e].w2, linear_shape(R, Fe, C), 1.0f,
                    0.0f, s);
  }
  // 4. each token's weighted sum, then the shared experts onto it
  combine_rows<<<blocks(N * C, 256), 256, 0, s>>>(y, residual, out, expert, row, weight, N, C, k);
  SLM_CUDA_LAUNCH_CHECK();
  for (std::size_t j = 0; j < w.shared.size(); ++j) {
    const auto at = static_cast<std::int64_t>(j) * N;
    T* ab_s = saved.shared_ab.as<T>() + at * 2 * Fe;
    T* h_s = saved.shared_h.as<T>() + at * Fe;
    ffn_up(ab_s, h_s, x, w.shared[j], N, C, Fe, gemm, s);
    scratchlm::gemm(gemm, y, static_cast<const T*>(h_s), w.shared[j].w2, linear_shape(N, Fe, C), 1.0f, 1.0f, s);
  }
}

template <typename T>
void moe_backward_cuda(float* dx, const GpuMoeGrads& g, GpuMoeScratch& scratch, const GpuMoeSaved& saved, const T* dy,
                       const T* x, const GpuMoeWeights<T>& w, const ModelConfig& c, double aux_scale,
                       GemmContext& gemm, CUstream_st* s) {
  const std::int64_t N = saved.N, R = saved.R, C = c.d_model, E = c.moe.num_experts, k = c.moe.top_k,
                     Fe = c.moe.d_ff_expert, A = N * k;
  SLM_CHECK(N >= 1 && scratch.din.bytes() >= E * R * C * 4, "moe_backward_cuda: no forward, or scratch without backward");
  SLM_CHECK(static_cast<std::int64_t>(g.experts.size()) == E &&
                static_cast<std::int64_t>(g.shared.size()) == c.moe.num_shared,
            "moe_backward_cuda: gradients for another number of experts");
  const auto* expert = saved.expert.as<std::int32_t>();
  const auto* weight = saved.weight.as<float>();
  const auto* row = saved.row.as<std::int32_t>();
  const auto* assignment = saved.assignment.as<std::int32_t>();
  const float* out = saved.out.as<float>();
  double* dweight = scratch.dweight.as<double>();
  T* in = scratch.in.as<T>();
  T* dout = scratch.dout.as<T>();
  float* din = scratch.din.as<float>();
  T* dh = scratch.dh.as<T>();
  T* dab = scratch.dab.as<T>();

  // dL/dw of each assignment, then each padded row's input and output gradient
  assignment_dweight<<<blocks(A * 32, 256), 256, 0, s>>>(dweight, dev(dy), out, row, A, C, k);
  SLM_CUDA_LAUNCH_CHECK();
  gather_rows_and_dout<<<blocks(E * R * C, 256), 256, 0, s>>>(dev(in), dev(dout), dev(x), dev(dy), assignment, weight,
                                                             E * R, C, k);
  SLM_CUDA_LAUNCH_CHECK();
  for (std::int64_t e = 0; e < E; ++e) {
    const T* ab_e = saved.ab.as<T>() + e * R * 2 * Fe;
    const T* h_e = saved.h.as<T>() + e * R * Fe;
    ffn_backward(din + e * R * C, g.experts[e], dh, dab, static_cast<const T*>(dout + e * R * C),
                 static_cast<const T*>(in + e * R * C), ab_e, h_e, w.experts[e], R, C, Fe, Accumulate::no, gemm, s);
  }
  // dx = Σ over each token's kept assignments of their input gradients, then the shared experts'
  combine_rows<<<blocks(N * C, 256), 256, 0, s>>>(dx, nullptr, din, expert, row, nullptr, N, C, k);
  SLM_CUDA_LAUNCH_CHECK();
  for (std::size_t j = 0; j < w.shared.size(); ++j) {
    const auto at = static_cast<std::int64_t>(j) * N;
    const T* ab_s = saved.shared_ab.as<T>() + at * 2 * Fe;
    const T* h_s = saved.shared_h.as<T>() + at * Fe;
    ffn_backward(dx, g.shared[j], dh, dab, dy, x, ab_s, h_s, w.shared[j], N, C, Fe, Accumulate::yes, gemm, s);
  }
  // the router
  T* dr = scratch.dr.as<T>();
  router_backward_thread_per_token<<<blocks(N, 128), 128, 0, s>>>(dev(dr), saved.probs.as<float>(), expert, weight,
                                                                  dweight, saved.tokens.as<std::int32_t>(), N, E, k,
                                                                  aux_scale);
  SLM_CUDA_LAUNCH_CHECK();
  const T* drc = dr;
  scratchlm::gemm(gemm, g.router, drc, x, linear_dw_shape(N, C, E), 1.0f, 1.0f, s);
  scratchlm::gemm(gemm, dx, drc, w.router, linear_dx_shape(N, C, E), 1.0f, 1.0f, s);
}

void moe_add_aux_cuda(double* sum, const GpuMoeSaved& saved, double scale, CUstream_st* stream) {
  add_aux<<<1, 1, 0, stream>>>(sum, saved.stats.as<GpuMoeStats>(), scale);
  SLM_CUDA_LAUNCH_CHECK();
}

MoeLayerStats moe_read_stats(const GpuMoeSaved& saved, const ModelConfig& c, CUstream_st* stream) {
  SLM_CUDA_CHECK(cudaStreamSynchronize(stream));
  GpuMoeStats st{};
  std::vector<std::int32_t> tokens(static_cast<std::size_t>(c.moe.num_experts));
  SLM_CUDA_CHECK(cudaMemcpy(&st, saved.stats.data(), sizeof st, cudaMemcpyDeviceToHost));
  SLM_CUDA_CHECK(cudaMemcpy(tokens.data(), saved.tokens.data(), tokens.size() * 4, cudaMemcpyDeviceToHost));
  MoeLayerStats r{.aux = st.aux, .dropped = st.dropped, .expert_tokens = {}};
  for (std::int32_t t : tokens) r.expert_tokens.push_back(t);
  return r;
}

#define SLM_INSTANTIATE_MOE(T)                                                                                        \
  template void moe_forward_cuda<T>(float*, GpuMoeSaved&, GpuMoeScratch&, const float*, const T*,                   \
                                    const GpuMoeWeights<T>&, const ModelConfig&, std::int64_t, MoeCapacity, GemmContext&,  \
                                    CUstream_st*);                                                                  \
  template void moe_backward_cuda<T>(float*, const GpuMoeGrads&, GpuMoeScratch&, const GpuMoeSaved&, const T*,      \
                                     const T*, const GpuMoeWeights<T>&, const ModelConfig&, double, GemmContext&,   \
                                     CUstream_st*);
SLM_INSTANTIATE_MOE(float)
SLM_INSTANTIATE_MOE(Bf16)
#undef SLM_INSTANTIATE_MOE

}  // namespace scratchlm
