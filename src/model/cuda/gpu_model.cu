// The GPU model (see gpu_model.h). forward and backward below are the CPU model's model_forward and
// model_backward (model.cpp) line for line, on device buffers; T is the working precision.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <vector>

#include "model/gpu_model.h"
#include "ops/cuda/attention_cuda.h"
#include "ops/cuda/gemm_cuda.h"
#include "ops/cuda/ops_cuda.h"
#include "ops/rope.h"
#include "tensor/cuda/cuda_check.cuh"
#include "tensor/gpu_buffer.h"
#include "util/progress.h"

namespace scratchlm {

const char* precision_name(GpuPrecision p) { return p == GpuPrecision::bf16 ? "bf16" : "fp32"; }

namespace {

// Ints per micro-batch in the input block: ids, targets, token groups (uniq, offsets, positions),
// and the number of distinct tokens.
std::int64_t micro_ints(std::int64_t N) { return 5 * N + 2; }

// Pinned host memory, move-only.
struct PinnedBuffer {
  void* ptr = nullptr;
  explicit PinnedBuffer(std::int64_t bytes) { SLM_CUDA_CHECK(cudaMallocHost(&ptr, static_cast<std::size_t>(bytes))); }
  ~PinnedBuffer() { cudaFreeHost(ptr); }
  PinnedBuffer(const PinnedBuffer&) = delete;
};

// The feed-forward's hidden activations: ab (N, 2F) T = [W1 ln2 | W3 ln2] (one matrix product),
// h (N, F) T = silu(a) ⊙ b. The largest activations of a layer; with recomputation one set serves
// every layer and backward recomputes a layer's set from its ln2 before using it.
struct FfnBuffers {
  GpuBuffer ab, h;
};

// One layer's saved activations. Lifetimes: written by forward, read by backward of the same pass.
struct LayerBuffers {
  GpuBuffer ln1;    // (N, C) T   rmsnorm1(x_in)
  GpuBuffer rstd1;  // (N) f32
  GpuBuffer qkv;    // (N, 3C) T  q, k (after RoPE), v
  GpuBuffer attn;   // (N, C) T   attention output
  GpuBuffer lse;    // (B, H, T) f32
  GpuBuffer ln2;    // (N, C) T
  GpuBuffer rstd2;  // (N) f32
  FfnBuffers ffn;   // empty with recomputation: the layers share Impl::ffn_shared
};

}  // namespace

struct GpuModel::Impl {
  ModelConfig c;
  GpuModelOptions o;
  ParamLayout layout;
  std::int64_t N = 0;   // tokens per micro-batch the buffers hold
  std::int64_t elem = 4;   // bytes of T

  cudaStream_t stream = nullptr;
  GemmContext gemm;

  // Arenas (layout.total floats) and the working-precision weights (bf16 only; fp32 reads params).
  GpuBuffer params, grads, m, v, params_copy;
  // Per parameter tensor, its offset in params_copy: the arena's order except that each layer's
  // w3 follows its w1, so that [W1; W3] is one (2F, C) matrix for the fused up-projection.
  std::vector<std::int64_t> copy_offset;
  GpuBuffer rope_cos, rope_sin;   // (context, D/2)

  // Activations (see LayerBuffers); resid[2l] is block l's input, resid[2l+1] its middle,
  // resid[2L] the final residual stream. All (N, C) f32.
  std::vector<GpuBuffer> resid;
  std::vector<LayerBuffers> layers;
  FfnBuffers ffn_shared;   // with recomputation
  GpuBuffer ln_final, rstd_final, logits, losses;   // (N, C) T, (N), (N, V) T, (N)
  // Backward scratch, live only inside one backward pass.
  GpuBuffer dresid;      // (N, C) f32  gradient of the residual stream
  GpuBuffer dresid_t;    // (N, C) T    its copy for the matrix products (bf16 only)
  GpuBuffer dln;         // (N, C) f32  gradient of a norm's output
  GpuBuffer dattn;       // (N, C) T
  GpuBuffer dqkv;        // (N, 3C) T
  GpuBuffer dh;          // (N, F) T
  GpuBuffer dab;         // (N, 2F) T  [da | db]
  GpuBuffer delta;       // (B, H, T) f32
  GpuBuffer norm_partials;   // (kRmsnormPartials, C) f32

  // Inputs: grad_accum micro-batches of micro_ints(N) ints, then a GpuStepIndex.
  GpuBuffer input;
  // Pinned host copies of the input block: two for training steps (the next step's block is staged
  // while the current step runs), one for the eager passes.
  std::unique_ptr<PinnedBuffer> step_host[2], eager_host;
  int next_slot = 0, staged = -1;
  std::vector<std::int32_t> counts;   // group_tokens scratch (V)
  // Optimizer.
  GpuBuffer chunks, opt_scratch, stats;
  std::int64_t num_chunks = 0;
  std::unique_ptr<PinnedBuffer> stats_host;
  GpuOptimizerOptions opt{};
  bool opt_set = false;
  // Timing marks of a profiled step (null otherwise): see mark().
  std::vector<std::pair<const char*, cudaEvent_t>>* profile = nullptr;
  // The step graph.
  int steps_submitted = 0;
  cudaGraphExec_t graph = nullptr;
  cudaEvent_t done = nullptr;

  std::int32_t* input_micro(std::int64_t micro) const { return input.as<std::int32_t>() + micro * micro_ints(N); }
  // The GpuStepIndex follows the micro-batches at an 8-byte aligned offset (in ints).
  std::int64_t index_offset() const { return (o.grad_accum * micro_ints(N) + 1) / 2 * 2; }
  GpuStepIndex* input_index() const { return reinterpret_cast<GpuStepIndex*>(input.as<std::int32_t>() + index_offset()); }
  std::int64_t input_bytes() const { return index_offset() * 4 + static_cast<std::int64_t>(sizeof(GpuStepIndex)); }
  // A view of one arena by parameter name.
  float* at(const GpuBuffer& arena, std::size_t spec) const { return arena.as<float>() + layout.specs[spec].offset; }
};

namespace {

// Indices into layout.specs (the table order of params.h).
struct SpecIndex {
  static std::size_t embedding() { return 0; }
  static std::size_t layer(std::int64_t l, int k) { return 1 + 9 * static_cast<std::size_t>(l) + k; }   // k: 0 ln1 .. 8 w3
  static std::size_t ln_final(std::int64_t L) { return 1 + 9 * static_cast<std::size_t>(L); }
  static std::size_t lm_head(std::int64_t L) { return 2 + 9 * static_cast<std::size_t>(L); }
};
enum LayerParam { kLn1 = 0, kWq = 1, kWk = 2, kWv = 3, kWo = 4, kLn2 = 5, kW1 = 6, kW2 = 7, kW3 = 8 };

// In a profiled step, an event after each part of the step: the time since the previous mark is
// the part's. Free otherwise.
void mark(GpuModel::Impl& m, const char* part) {
  if (!m.profile) return;
  cudaEvent_t e = nullptr;
  SLM_CUDA_CHECK(cudaEventCreate(&e));
  SLM_CUDA_CHECK(cudaEventRecord(e, m.stream));
  m.profile->emplace_back(part, e);
}

template <typename T>
const T* weight(const GpuModel::Impl& m, std::size_t spec) {
  if constexpr (std::is_same_v<T, float>) return m.at(m.params, spec);
  else return m.params_copy.as<T>() + m.copy_offset[spec];
}

template <typename T>
T* buf(const GpuBuffer& b) { return b.as<T>(); }

FfnBuffers& ffn_of(GpuModel::Impl& m, std::int64_t l) { return m.o.recompute ? m.ffn_shared : m.layers[l].ffn; }

// The feed-forward's up projections and gate for layer l: ab, h from ln2 (forward, and backward
// when recomputing). In bf16 [W1; W3] is one matrix of the working copy: one product; in fp32 the
// master weights are read in place, W1 and W3 apart: two products into the halves of ab.
template <typename T>
void ffn_up(GpuModel::Impl& m, std::int64_t l, std::int64_t N) {
  const std::int64_t C = m.c.d_model, F = m.c.d_ff;
  const LayerBuffers& a = m.layers[l];
  FfnBuffers& f = ffn_of(m, l);
  if constexpr (std::is_same_v<T, Bf16>) {
    gemm(m.gemm, buf<T>(f.ab), buf<T>(a.ln2), weight<T>(m, SpecIndex::layer(l, kW1)), linear_shape(N, C, 2 * F), 1.0f,
         0.0f, m.stream);
  } else {
    GemmShape half = linear_shape(N, C, F);
    half.ldd = 2 * F;
    gemm(m.gemm, buf<T>(f.ab), buf<T>(a.ln2), weight<T>(m, SpecIndex::layer(l, kW1)), half, 1.0f, 0.0f, m.stream);
    gemm(m.gemm, buf<T>(f.ab) + F, buf<T>(a.ln2), weight<T>(m, SpecIndex::layer(l, kW3)), half, 1.0f, 0.0f, m.stream);
  }
  mark(m, "matmul w1 w3 forward");
  swiglu_forward_cuda(buf<T>(f.h), buf<T>(f.ab), N, F, m.stream);
  mark(m, "swiglu forward");
}

// Forward over ids (B, T) into the activation buffers, then the classifier: losses (N) and, when
// grad_scale != 0, dlogits over the logits.
template <typename T>
void forward(GpuModel::Impl& m, const std::int32_t* ids, const std::int32_t* targets, std::int64_t B, std::int64_t T_,
             float grad_scale) {
  const ModelConfig& c = m.c;
  const std::int64_t N = B * T_, C = c.d_model, F = c.d_ff, V = c.vocab_size, H = c.num_heads, D = c.d_head();
  const std::int64_t L = c.num_layers;
  cudaStream_t s = m.stream;
  const GpuAttentionShape shape{B, T_, H, D};
  const bool mma = std::is_same_v<T, Bf16> && attention_mma_supported(D);

  embedding_forward_cuda(buf<float>(m.resid[0]), ids, m.at(m.params, SpecIndex::embedding()), N, C, s);
  mark(m, "embedding forward");
  for (std::int64_t l = 0; l < L; ++l) {
    LayerBuffers& a = m.layers[l];
    float* x_in = buf<float>(m.resid[2 * l]);
    float* x_mid = buf<float>(m.resid[2 * l + 1]);
    float* x_out = buf<float>(m.resid[2 * l + 2]);
    // attention sublayer: x_mid = x_in + Wo · attention(rope(Wq ln1), rope(Wk ln1), Wv ln1)
    rmsnorm_forward_cuda(buf<T>(a.ln1), buf<float>(a.rstd1), x_in, m.at(m.params, SpecIndex::layer(l, kLn1)), N, C, s);
    mark(m, "rmsnorm forward");
    gemm(m.gemm, buf<T>(a.qkv), buf<T>(a.ln1), weight<T>(m, SpecIndex::layer(l, kWq)), linear_shape(N, C, 3 * C),
         1.0f, 0.0f, s);   // q, k, v weights are consecutive in the arena: one (3C, C) matrix
    mark(m, "matmul qkv forward");
    rope_qk_cuda(buf<T>(a.qkv), buf<float>(m.rope_cos), buf<float>(m.rope_sin), shape, RopeDirection::forward, s);
    mark(m, "rope forward");
    if constexpr (std::is_same_v<T, Bf16>) {
      if (mma) attention_forward_mma(buf<T>(a.attn), buf<float>(a.lse), buf<T>(a.qkv), shape, s);
      else attention_forward_cuda(buf<T>(a.attn), buf<float>(a.lse), buf<T>(a.qkv), shape, s);
    } else {
      attention_forward_cuda(buf<T>(a.attn), buf<float>(a.lse), buf<T>(a.qkv), shape, s);
    }
    mark(m, "attention forward");
    gemm(m.gemm, x_mid, buf<T>(a.attn), weight<T>(m, SpecIndex::layer(l, kWo)), linear_shape(N, C, C), 1.0f, 1.0f, s,
         static_cast<const float*>(x_in));   // + x_in in the epilogue
    mark(m, "matmul out_proj forward");
    // feed-forward sublayer: x_out = x_mid + W2 (silu(W1 ln2) ⊙ W3 ln2)
    rmsnorm_forward_cuda(buf<T>(a.ln2), buf<float>(a.rstd2), x_mid, m.at(m.params, SpecIndex::layer(l, kLn2)), N, C,
                         s);
    mark(m, "rmsnorm forward");
    ffn_up<T>(m, l, N);
    gemm(m.gemm, x_out, buf<T>(ffn_of(m, l).h), weight<T>(m, SpecIndex::layer(l, kW2)), linear_shape(N, F, C), 1.0f, 1.0f, s,
         static_cast<const float*>(x_mid));
    mark(m, "matmul w2 forward");
  }
  rmsnorm_forward_cuda(buf<T>(m.ln_final), buf<float>(m.rstd_final), buf<float>(m.resid[2 * L]),
                       m.at(m.params, SpecIndex::ln_final(L)), N, C, s);
  mark(m, "rmsnorm forward");
  gemm(m.gemm, buf<T>(m.logits), buf<T>(m.ln_final), weight<T>(m, SpecIndex::lm_head(L)), linear_shape(N, C, V), 1.0f,
       0.0f, s);
  mark(m, "matmul lm_head forward");
  classifier_cuda(buf<T>(m.logits), buf<float>(m.losses), targets, N, V, grad_scale, s);
  mark(m, "classifier");
}

// Backward of the pass forward() just made with grad_scale != 0 (the logits hold dlogits);
// parameter gradients are accumulated into m.grads.
template <typename T>
void backward(GpuModel::Impl& m, const TokenGroups& groups, std::int64_t B, std::int64_t T_) {
  const ModelConfig& c = m.c;
  const std::int64_t N = B * T_, C = c.d_model, F = c.d_ff, V = c.vocab_size, H = c.num_heads, D = c.d_head();
  const std::int64_t L = c.num_layers;
  cudaStream_t s = m.stream;
  const GpuAttentionShape shape{B, T_, H, D};
  const bool mma = std::is_same_v<T, Bf16> && attention_mma_supported(D);
  float* dresid = buf<float>(m.dresid);
  // The residual gradient as the matrix products read it: fp32 itself, or its bf16 copy.
  T* dresid_t = nullptr;
  const T* dres_in = nullptr;
  if constexpr (std::is_same_v<T, float>) dres_in = dresid;
  else dres_in = dresid_t = buf<T>(m.dresid_t);
  float* dln = buf<float>(m.dln);
  float* partials = buf<float>(m.norm_partials);
  auto g = [&](std::size_t spec) { return m.at(m.grads, spec); };
  auto gain = [&](std::size_t spec) { return m.at(m.params, spec); };

  // logits → final norm
  const T* dlogits = buf<T>(m.logits);
  gemm(m.gemm, dln, dlogits, weight<T>(m, SpecIndex::lm_head(L)), linear_dx_shape(N, C, V), 1.0f, 0.0f, s);
  gemm(m.gemm, g(SpecIndex::lm_head(L)), dlogits, buf<T>(m.ln_final), linear_dw_shape(N, C, V), 1.0f, 1.0f, s);
  mark(m, "matmul lm_head backward");
  SLM_CUDA_CHECK(cudaMemsetAsync(dresid, 0, static_cast<std::size_t>(N * C * 4), s));
  rmsnorm_backward_cuda(dresid, dresid_t, g(SpecIndex::ln_final(L)), partials, dln, buf<float>(m.resid[2 * L]),
                        gain(SpecIndex::ln_final(L)), buf<float>(m.rstd_final), N, C, s);
  mark(m, "rmsnorm backward");

  for (std::int64_t l = L; l-- > 0;) {
    LayerBuffers& a = m.layers[l];
    // feed-forward sublayer; dresid holds dL/dx_out
    if (m.o.recompute) ffn_up<T>(m, l, N);   // a, b, h of this layer again
    const FfnBuffers& f = ffn_of(m, l);
    gemm(m.gemm, buf<T>(m.dh), dres_in, weight<T>(m, SpecIndex::layer(l, kW2)), linear_dx_shape(N, F, C), 1.0f, 0.0f,
         s);
    gemm(m.gemm, g(SpecIndex::layer(l, kW2)), dres_in, buf<T>(f.h), linear_dw_shape(N, F, C), 1.0f, 1.0f, s);
    mark(m, "matmul w2 backward");
    swiglu_backward_cuda(buf<T>(m.dab), buf<T>(m.dh), buf<T>(f.ab), N, F, s);
    mark(m, "swiglu backward");
    T* dab = buf<T>(m.dab);
    if constexpr (std::is_same_v<T, Bf16>) {   // dln = [da | db] · [W1; W3]
      gemm(m.gemm, dln, static_cast<const T*>(dab), weight<T>(m, SpecIndex::layer(l, kW1)),
           linear_dx_shape(N, C, 2 * F), 1.0f, 0.0f, s);
    } else {
      GemmShape half = linear_dx_shape(N, C, F);
      half.lda = 2 * F;
      gemm(m.gemm, dln, static_cast<const T*>(dab), weight<T>(m, SpecIndex::layer(l, kW1)), half, 1.0f, 0.0f, s);
      gemm(m.gemm, dln, static_cast<const T*>(dab + F), weight<T>(m, SpecIndex::layer(l, kW3)), half, 1.0f, 1.0f, s);
    }
    GemmShape dw = linear_dw_shape(N, C, F);
    dw.lda = 2 * F;
    gemm(m.gemm, g(SpecIndex::layer(l, kW1)), static_cast<const T*>(dab), buf<T>(a.ln2), dw, 1.0f, 1.0f, s);
    gemm(m.gemm, g(SpecIndex::layer(l, kW3)), static_cast<const T*>(dab + F), buf<T>(a.ln2), dw, 1.0f, 1.0f, s);
    mark(m, "matmul w1 w3 backward");
    rmsnorm_backward_cuda(dresid, dresid_t, g(SpecIndex::layer(l, kLn2)), partials, dln, buf<float>(m.resid[2 * l + 1]),
                          gain(SpecIndex::layer(l, kLn2)), buf<float>(a.rstd2), N, C, s);
    mark(m, "rmsnorm backward");
    // attention sublayer; dresid holds dL/dx_mid
    gemm(m.gemm, buf<T>(m.dattn), dres_in, weight<T>(m, SpecIndex::layer(l, kWo)), linear_dx_shape(N, C, C), 1.0f,
         0.0f, s);
    gemm(m.gemm, g(SpecIndex::layer(l, kWo)), dres_in, buf<T>(a.attn), linear_dw_shape(N, C, C), 1.0f, 1.0f, s);
    mark(m, "matmul out_proj backward");
    if constexpr (std::is_same_v<T, Bf16>) {
      if (mma)
        attention_backward_mma(buf<T>(m.dqkv), buf<float>(m.delta), buf<T>(m.dattn), buf<T>(a.qkv), buf<T>(a.attn),
                               buf<float>(a.lse), shape, s);
      else
        attention_backward_cuda(buf<T>(m.dqkv), buf<float>(m.delta), buf<T>(m.dattn), buf<T>(a.qkv), buf<T>(a.attn),
                                buf<float>(a.lse), shape, s);
    } else {
      attention_backward_cuda(buf<T>(m.dqkv), buf<float>(m.delta), buf<T>(m.dattn), buf<T>(a.qkv), buf<T>(a.attn),
                              buf<float>(a.lse), shape, s);
    }
    mark(m, "attention backward");
    rope_qk_cuda(buf<T>(m.dqkv), buf<float>(m.rope_cos), buf<float>(m.rope_sin), shape, RopeDirection::inverse, s);
    mark(m, "rope backward");
    gemm(m.gemm, dln, buf<T>(m.dqkv), weight<T>(m, SpecIndex::layer(l, kWq)), linear_dx_shape(N, C, 3 * C), 1.0f, 0.0f,
         s);
    gemm(m.gemm, g(SpecIndex::layer(l, kWq)), buf<T>(m.dqkv), buf<T>(a.ln1), linear_dw_shape(N, C, 3 * C), 1.0f,
         1.0f, s);
    mark(m, "matmul qkv backward");
    rmsnorm_backward_cuda(dresid, dresid_t, g(SpecIndex::layer(l, kLn1)), partials, dln, buf<float>(m.resid[2 * l]),
                          gain(SpecIndex::layer(l, kLn1)), buf<float>(a.rstd1), N, C, s);
    mark(m, "rmsnorm backward");
  }
  embedding_backward_cuda(g(SpecIndex::embedding()), dresid, groups, std::min(N, V), C, s);
  mark(m, "embedding backward");
}

// The input block of one micro-batch on the host: ids, targets and their token groups.
void fill_micro(std::int32_t* dst, const std::int32_t* ids, const std::int32_t* targets, std::int64_t N,
                std::vector<std::int32_t>& counts) {
  std::memcpy(dst, ids, static_cast<std::size_t>(N) * 4);
  std::memcpy(dst + N, targets, static_cast<std::size_t>(N) * 4);
  group_tokens(dst + 2 * N, dst + 3 * N, dst + 4 * N + 1, dst + 5 * N + 1, ids, N, counts.data(),
               static_cast<std::int64_t>(counts.size()));
}

TokenGroups groups_of(const std::int32_t* micro, std::int64_t N) {
  return {micro + 2 * N, micro + 3 * N, micro + 4 * N + 1, micro + 5 * N + 1};
}

template <typename T>
void record_step(GpuModel::Impl& m) {
  const std::int64_t B = m.o.batch, T_ = m.c.context_length, N = B * T_;
  cudaStream_t s = m.stream;
  auto* stats = m.stats.as<GpuStepStats>();
  SLM_CUDA_CHECK(cudaMemsetAsync(m.grads.data(), 0, static_cast<std::size_t>(m.grads.bytes()), s));
  step_begin_cuda(stats, s);
  mark(m, "zero gradients");
  const float scale = 1.0f / static_cast<float>(N * m.o.grad_accum);
  for (std::int64_t micro = 0; micro < m.o.grad_accum; ++micro) {
    const std::int32_t* in = m.input_micro(micro);
    forward<T>(m, in, in + N, B, T_, scale);
    sum_into_cuda(&stats->loss, buf<float>(m.losses), N, 1.0 / static_cast<double>(N * m.o.grad_accum), s);
    mark(m, "classifier");
    backward<T>(m, groups_of(in, N), B, T_);
  }
  T* copy = nullptr;
  if constexpr (std::is_same_v<T, Bf16>) copy = m.params_copy.as<T>();
  optimizer_step_cuda<T>(m.params.as<float>(), copy, m.grads.as<float>(), m.m.as<float>(), m.v.as<float>(),
                         m.layout.total, m.chunks.as<AdamWChunk>(), m.num_chunks, m.opt_scratch.as<double>(), stats,
                         m.input_index(), m.opt, s);
  mark(m, "optimizer (norm, clip, AdamW)");
  SLM_CUDA_CHECK(cudaMemcpyAsync(m.stats_host->ptr, stats, sizeof(GpuStepStats), cudaMemcpyDeviceToHost, s));
}

// Logits (rows × V) of the working precision, as floats on the host.
void download_logits(const GpuModel::Impl& m, std::int64_t first_row, std::int64_t rows, float* out) {
  const std::int64_t V = m.c.vocab_size, n = rows * V;
  if (m.o.precision == GpuPrecision::fp32) {
    copy_from_gpu(out, m.logits.as<float>() + first_row * V, n * 4);
    return;
  }
  std::vector<Bf16> tmp(static_cast<std::size_t>(n));
  copy_from_gpu(tmp.data(), m.logits.as<Bf16>() + first_row * V, n * 2);
  for (std::int64_t i = 0; i < n; ++i) out[i] = to_float(tmp[i]);
}

}  // namespace

GpuModel::GpuModel(const ModelConfig& c, const GpuModelOptions& o) : impl_(std::make_unique<Impl>()) {
  if (!c.is_default_architecture())
    fail("the GPU path has the CS336 architecture only so far (model fields \"ffn\", \"position\", \"tie_embeddings\", "
         "\"z_loss\", \"logit_softcap\", \"qk_norm\", \"block\", \"num_kv_heads\", \"head_dim\", \"attention_window\", "
         "\"attn_softcap\", \"dropout\", \"attention_dropout\", \"norm\", \"norm_placement\", \"bias\", \"moe\" at "
         "their defaults; this model sets ",
         to_json(c).dump(), "); train it on the CPU with --device cpu");
  Impl& m = *impl_;
  m.c = c;
  m.o = o;
  m.layout = param_layout(c);
  const std::int64_t B = o.batch, T_ = c.context_length, N = B * T_, C = c.d_model, F = c.d_ff, V = c.vocab_size,
                     H = c.num_heads, L = c.num_layers;
  m.N = N;
  m.elem = o.precision == GpuPrecision::bf16 ? 2 : 4;
  const std::int64_t e = m.elem, P = m.layout.total;
  SLM_CUDA_CHECK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
  SLM_CUDA_CHECK(cudaEventCreateWithFlags(&m.done, cudaEventDisableTiming));

  m.params = GpuBuffer(P * 4);
  if (o.precision == GpuPrecision::bf16) {
    m.params_copy = GpuBuffer(P * 2);
    // The arena's order, with each layer's w3 moved in front of its w2.
    m.copy_offset.resize(m.layout.specs.size());
    std::int64_t next = 0;
    auto place = [&](std::size_t spec) {
      m.copy_offset[spec] = next;
      next += m.layout.specs[spec].numel();
    };
    place(SpecIndex::embedding());
    for (std::int64_t l = 0; l < L; ++l)
      for (int k : {kLn1, kWq, kWk, kWv, kWo, kLn2, kW1, kW3, kW2}) place(SpecIndex::layer(l, k));
    place(SpecIndex::ln_final(L));
    place(SpecIndex::lm_head(L));
    SLM_CHECK(next == P);
  }
  if (o.with_backward) {
    m.grads = GpuBuffer(P * 4);
    m.m = GpuBuffer(P * 4);
    m.v = GpuBuffer(P * 4);
    SLM_CUDA_CHECK(cudaMemset(m.grads.data(), 0, static_cast<std::size_t>(P * 4)));
    SLM_CUDA_CHECK(cudaMemset(m.m.data(), 0, static_cast<std::size_t>(P * 4)));
    SLM_CUDA_CHECK(cudaMemset(m.v.data(), 0, static_cast<std::size_t>(P * 4)));
  }
  const RopeTable rope = make_rope_table(c.rope_theta, c.d_head(), T_);
  m.rope_cos = GpuBuffer(static_cast<std::int64_t>(rope.cos.size()) * 4);
  m.rope_sin = GpuBuffer(static_cast<std::int64_t>(rope.sin.size()) * 4);
  copy_to_gpu(m.rope_cos.data(), rope.cos.data(), m.rope_cos.bytes());
  copy_to_gpu(m.rope_sin.data(), rope.sin.data(), m.rope_sin.bytes());

  for (std::int64_t i = 0; i <= 2 * L; ++i) m.resid.emplace_back(N * C * 4);
  m.layers.resize(static_cast<std::size_t>(L));
  for (LayerBuffers& a : m.layers) {
    a.ln1 = GpuBuffer(N * C * e);
    a.rstd1 = GpuBuffer(N * 4);
    a.qkv = GpuBuffer(N * 3 * C * e);
    a.attn = GpuBuffer(N * C * e);
    a.lse = GpuBuffer(B * H * T_ * 4);
    a.ln2 = GpuBuffer(N * C * e);
    a.rstd2 = GpuBuffer(N * 4);
    if (!o.recompute) a.ffn = {GpuBuffer(N * 2 * F * e), GpuBuffer(N * F * e)};
  }
  if (o.recompute) m.ffn_shared = {GpuBuffer(N * 2 * F * e), GpuBuffer(N * F * e)};
  m.ln_final = GpuBuffer(N * C * e);
  m.rstd_final = GpuBuffer(N * 4);
  m.logits = GpuBuffer(N * V * e);
  m.losses = GpuBuffer(N * 4);
  if (o.with_backward) {
    m.dresid = GpuBuffer(N * C * 4);
    if (o.precision == GpuPrecision::bf16) m.dresid_t = GpuBuffer(N * C * e);
    m.dln = GpuBuffer(N * C * 4);
    m.dattn = GpuBuffer(N * C * e);
    m.dqkv = GpuBuffer(N * 3 * C * e);
    m.dh = GpuBuffer(N * F * e);
    m.dab = GpuBuffer(N * 2 * F * e);
    m.delta = GpuBuffer(B * H * T_ * 4);
    m.norm_partials = GpuBuffer(kRmsnormPartials * C * 4);
    m.opt_scratch = GpuBuffer(kOptimizerScratch * 8);
  }
  m.input = GpuBuffer(m.input_bytes());
  for (auto& slot : m.step_host) slot = std::make_unique<PinnedBuffer>(m.input_bytes());
  m.eager_host = std::make_unique<PinnedBuffer>(m.input_bytes());
  m.counts.resize(static_cast<std::size_t>(V));
  m.stats = GpuBuffer(sizeof(GpuStepStats));
  m.stats_host = std::make_unique<PinnedBuffer>(sizeof(GpuStepStats));
}

GpuModel::~GpuModel() {
  if (!impl_) return;
  if (impl_->graph) cudaGraphExecDestroy(impl_->graph);
  if (impl_->done) cudaEventDestroy(impl_->done);
  if (impl_->stream) cudaStreamDestroy(impl_->stream);
}

const ParamLayout& GpuModel::layout() const { return impl_->layout; }

void GpuModel::set_params(const float* params) {
  Impl& m = *impl_;
  copy_to_gpu(m.params.data(), params, m.params.bytes());
  if (m.o.precision == GpuPrecision::bf16) {
    for (std::size_t k = 0; k < m.layout.specs.size(); ++k)
      convert_cuda(m.params_copy.as<Bf16>() + m.copy_offset[k], m.params.as<float>() + m.layout.specs[k].offset,
                   m.layout.specs[k].numel(), m.stream);
    SLM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  }
}

void GpuModel::get_params(float* params) const { copy_from_gpu(params, impl_->params.data(), impl_->params.bytes()); }

void GpuModel::get_grads(float* grads) const {
  SLM_CHECK(impl_->o.with_backward);
  copy_from_gpu(grads, impl_->grads.data(), impl_->grads.bytes());
}

void GpuModel::set_optimizer_state(const float* m, const float* v) {
  copy_to_gpu(impl_->m.data(), m, impl_->m.bytes());
  copy_to_gpu(impl_->v.data(), v, impl_->v.bytes());
}

void GpuModel::get_optimizer_state(float* m, float* v) const {
  copy_from_gpu(m, impl_->m.data(), impl_->m.bytes());
  copy_from_gpu(v, impl_->v.data(), impl_->v.bytes());
}

void GpuModel::zero_grads() {
  SLM_CUDA_CHECK(cudaMemset(impl_->grads.data(), 0, static_cast<std::size_t>(impl_->grads.bytes())));
}

namespace {

// Copies one micro-batch's inputs to the device (synchronously) for the eager passes.
void upload_micro(GpuModel::Impl& m, const std::int32_t* ids, const std::int32_t* targets, std::int64_t B,
                  std::int64_t T_) {
  SLM_CHECK(B >= 1 && B <= m.o.batch && T_ >= 1 && T_ <= m.c.context_length, "batch ", B, "x", T_,
            " does not fit the buffers (", m.o.batch, "x", m.c.context_length, ")");
  const std::int64_t N = B * T_;
  auto* host = static_cast<std::int32_t*>(m.eager_host->ptr);
  fill_micro(host, ids, targets, N, m.counts);
  SLM_CUDA_CHECK(cudaMemcpyAsync(m.input.data(), host, static_cast<std::size_t>(micro_ints(N) * 4),
                                 cudaMemcpyHostToDevice, m.stream));
}

double mean_loss(GpuModel::Impl& m, std::int64_t N) {
  GpuBuffer sum(8);
  SLM_CUDA_CHECK(cudaMemsetAsync(sum.data(), 0, 8, m.stream));
  sum_into_cuda(sum.as<double>(), m.losses.as<float>(), N, 1.0 / static_cast<double>(N), m.stream);
  double out = 0;
  SLM_CUDA_CHECK(cudaMemcpyAsync(&out, sum.data(), 8, cudaMemcpyDeviceToHost, m.stream));
  SLM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  return out;
}

}  // namespace

double GpuModel::forward(const std::int32_t* ids, const std::int32_t* targets, std::int64_t B, std::int64_t T_,
                         float* logits) {
  Impl& m = *impl_;
  upload_micro(m, ids, targets, B, T_);
  const std::int32_t* in = m.input.as<std::int32_t>();
  const std::int64_t N = B * T_;
  if (m.o.precision == GpuPrecision::bf16) scratchlm::forward<Bf16>(m, in, in + N, B, T_, 0.0f);
  else scratchlm::forward<float>(m, in, in + N, B, T_, 0.0f);
  const double loss = mean_loss(m, N);
  if (logits) download_logits(m, 0, N, logits);
  return loss;
}

double GpuModel::forward_backward(const std::int32_t* ids, const std::int32_t* targets, std::int64_t B,
                                  std::int64_t T_, float loss_scale) {
  Impl& m = *impl_;
  SLM_CHECK(m.o.with_backward);
  upload_micro(m, ids, targets, B, T_);
  const std::int32_t* in = m.input.as<std::int32_t>();
  const std::int64_t N = B * T_;
  const float scale = loss_scale / static_cast<float>(N);
  if (m.o.precision == GpuPrecision::bf16) {
    scratchlm::forward<Bf16>(m, in, in + N, B, T_, scale);
    backward<Bf16>(m, groups_of(in, N), B, T_);
  } else {
    scratchlm::forward<float>(m, in, in + N, B, T_, scale);
    backward<float>(m, groups_of(in, N), B, T_);
  }
  return mean_loss(m, N);
}

void GpuModel::last_logits(const std::int32_t* ids, std::int64_t T_, float* logits) {
  Impl& m = *impl_;
  std::vector<std::int32_t> targets(static_cast<std::size_t>(T_), 0);
  upload_micro(m, ids, targets.data(), 1, T_);
  const std::int32_t* in = m.input.as<std::int32_t>();
  if (m.o.precision == GpuPrecision::bf16) scratchlm::forward<Bf16>(m, in, in + T_, 1, T_, 0.0f);
  else scratchlm::forward<float>(m, in, in + T_, 1, T_, 0.0f);
  download_logits(m, T_ - 1, 1, logits);
}

void GpuModel::stage_step(const std::int32_t* x, const std::int32_t* y) {
  Impl& m = *impl_;
  SLM_CHECK(m.o.with_backward && m.staged < 0, "a step is staged already");
  // This slot's last copy to the device (two steps ago) has finished: finish_step waited for it.
  auto* host = static_cast<std::int32_t*>(m.step_host[m.next_slot]->ptr);
  for (std::int64_t micro = 0; micro < m.o.grad_accum; ++micro)
    fill_micro(host + micro * micro_ints(m.N), x + micro * m.N, y + micro * m.N, m.N, m.counts);
  m.staged = m.next_slot;
}

void GpuModel::submit_step(const std::int32_t* x, const std::int32_t* y, const GpuStepIndex& index,
                           const GpuOptimizerOptions& opt) {
  stage_step(x, y);
  submit_staged(index, opt);
}

void GpuModel::submit_staged(const GpuStepIndex& index, const GpuOptimizerOptions& opt) {
  Impl& m = *impl_;
  SLM_CHECK(m.staged >= 0, "no step staged");
  if (!m.opt_set) {
    m.opt = opt;
    const std::vector<AdamWChunk> chunks = adamw_chunks(m.layout, opt.adamw, m.copy_offset);
    m.num_chunks = static_cast<std::int64_t>(chunks.size());
    m.chunks = GpuBuffer(m.num_chunks * static_cast<std::int64_t>(sizeof(AdamWChunk)));
    copy_to_gpu(m.chunks.data(), chunks.data(), m.chunks.bytes());
    m.opt_set = true;
  }
  SLM_CHECK(std::memcmp(&m.opt, &opt, sizeof opt) == 0, "optimizer options changed between steps");
  auto* host = static_cast<std::int32_t*>(m.step_host[m.staged]->ptr);
  std::memcpy(host + m.index_offset(), &index, sizeof index);
  SLM_CUDA_CHECK(cudaMemcpyAsync(m.input.data(), host, static_cast<std::size_t>(m.input_bytes()),
                                 cudaMemcpyHostToDevice, m.stream));
  m.next_slot = 1 - m.staged;
  m.staged = -1;
  auto record = [&] {
    if (m.o.precision == GpuPrecision::bf16) record_step<Bf16>(m);
    else record_step<float>(m);
  };
  if (m.steps_submitted == 0) {
    record();   // eager: cuBLASLt picks its algorithms outside the capture
  } else {
    if (!m.graph) {
      cudaGraph_t g = nullptr;
      SLM_CUDA_CHECK(cudaStreamBeginCapture(m.stream, cudaStreamCaptureModeThreadLocal));
      record();
      SLM_CUDA_CHECK(cudaStreamEndCapture(m.stream, &g));
      SLM_CUDA_CHECK(cudaGraphInstantiate(&m.graph, g, 0));
      cudaGraphDestroy(g);
    }
    SLM_CUDA_CHECK(cudaGraphLaunch(m.graph, m.stream));
  }
  SLM_CUDA_CHECK(cudaEventRecord(m.done, m.stream));
  m.steps_submitted += 1;
}

std::string GpuModel::profile_step(const std::int32_t* x, const std::int32_t* y, const GpuStepIndex& index,
                                   const GpuOptimizerOptions& opt) {
  Impl& m = *impl_;
  std::vector<std::pair<const char*, cudaEvent_t>> marks;
  finish_step();
  SLM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  stage_step(x, y);
  m.profile = &marks;
  mark(m, "start");
  const int submitted = m.steps_submitted;
  m.steps_submitted = 0;   // eager, so that the marks are recorded
  submit_staged(index, opt);
  m.steps_submitted = submitted + 1;
  m.profile = nullptr;
  finish_step();
  // Time per part, summed over layers, in order of first appearance.
  std::vector<std::pair<std::string, double>> parts;
  double total = 0;
  for (std::size_t i = 1; i < marks.size(); ++i) {
    float ms = 0;
    SLM_CUDA_CHECK(cudaEventElapsedTime(&ms, marks[i - 1].second, marks[i].second));
    total += ms;
    auto it = std::find_if(parts.begin(), parts.end(), [&](const auto& p) { return p.first == marks[i].first; });
    if (it == parts.end()) parts.emplace_back(marks[i].first, ms);
    else it->second += ms;
  }
  for (auto& [name, e] : marks) cudaEventDestroy(e);
  std::string out = str("profile of one eager step: ", total, " ms\n");
  for (const auto& [name, ms] : parts) {
    char line[128];
    std::snprintf(line, sizeof line, "  %-30s %8.3f ms  %5.1f%%\n", name.c_str(), ms, 100.0 * ms / total);
    out += line;
  }
  return out;
}

GpuStepStats GpuModel::finish_step() {
  SLM_CUDA_CHECK(cudaEventSynchronize(impl_->done));
  GpuStepStats out;
  std::memcpy(&out, impl_->stats_host->ptr, sizeof out);
  return out;
}

std::string GpuModel::memory_plan() const {
  const Impl& m = *impl_;
  auto sum = [](std::initializer_list<const GpuBuffer*> bs) {
    double s = 0;
    for (const GpuBuffer* b : bs) s += static_cast<double>(b->bytes());
    return s;
  };
  double saved = 0;
  for (const GpuBuffer& r : m.resid) saved += static_cast<double>(r.bytes());
  for (const LayerBuffers& a : m.layers)
    saved += sum({&a.ln1, &a.rstd1, &a.qkv, &a.attn, &a.lse, &a.ln2, &a.rstd2, &a.ffn.ab, &a.ffn.h});
  saved += sum({&m.ffn_shared.ab, &m.ffn_shared.h});
  saved += sum({&m.ln_final, &m.rstd_final, &m.losses});
  const double scratch = sum({&m.dresid, &m.dresid_t, &m.dln, &m.dattn, &m.dqkv, &m.dh, &m.dab, &m.delta,
                              &m.norm_partials});
  return str("memory plan (GPU, ", precision_name(m.o.precision), "): parameters fp32 ",
             human_bytes(static_cast<double>(m.params.bytes())), " + working copy ",
             human_bytes(static_cast<double>(m.params_copy.bytes())), ", gradients ",
             human_bytes(static_cast<double>(m.grads.bytes())), ", AdamW state ",
             human_bytes(static_cast<double>(m.m.bytes() + m.v.bytes())), "\n  activations saved for backward ",
             human_bytes(saved), ", logits ", human_bytes(static_cast<double>(m.logits.bytes())),
             ", backward scratch ", human_bytes(scratch), " (batch ", m.o.batch, " x ", m.c.context_length,
             ", grad_accum ", m.o.grad_accum, m.o.recompute ? ", feed-forward recomputed in backward" : "",
             ")\n  total ", human_bytes(static_cast<double>(gpu_buffer_bytes())),
             " in scratchlm's buffers, plus cuBLASLt's 32 MiB workspace");
}

}  // namespace scratchlm
