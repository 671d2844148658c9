// The GPU model (see gpu_model.h). forward and backward below are the CPU model's model_forward and
// model_backward (model.cpp) step for step, variants included, on device buffers; T is the working
// precision.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "model/cuda/moe_cuda.h"
#include "model/gpu_model.h"
#include "ops/cuda/attention_cuda.h"
#include "ops/cuda/gemm_cuda.h"
#include "ops/cuda/ops_cuda.h"
#include "ops/cuda/variant_ops_cuda.h"
#include "ops/embedding.h"
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

// The dense feed-forward's hidden activations: ab (N, 2F) T = [W1 x | W3 x] (one matrix product;
// (N, F) = W1 x alone for the plain MLP), h (N, F) T = act(a) [⊙ b]. The largest activations of a
// layer; with recomputation one set serves every layer and backward recomputes a layer's set from
// the feed-forward's input before using it.
struct FfnBuffers {
  GpuBuffer ab, h;
};

// A norm's saved statistics: rstd (N) and, for LayerNorm, mean (N); empty buffers where the model
// has no such norm.
struct NormStats {
  GpuBuffer mean, rstd;
};

// One layer's saved activations. Lifetimes: written by forward, read by backward of the same pass.
// Q = H·D and K = Hkv·D are the query and key widths (config.h); both C by default.
struct LayerBuffers {
  GpuBuffer ln1;      // (N, C) T   the attention's input: norm1(x_in) (pre, double placements) or x_in in T
  NormStats norm1;    //            norm1's statistics (in post placement norm1 follows the attention)
  GpuBuffer qkv;      // (N, Q + 2K) T  q, k (after QK-norm and RoPE), v
  GpuBuffer qk_raw;   // (N, Q + K) T   q and k before QK-norm (qk_norm only)
  GpuBuffer rstd_qk;  // (N, H + Hkv) f32 (qk_norm only)
  GpuBuffer attn;     // (N, Q) T   attention output
  GpuBuffer lse;      // (B, H, T) f32
  // Post and double placements: each sublayer's output before the norm that follows it, (N, C)
  // f32: post x_in + attention (norm1's input), x_mid + ffn (norm2's); double the outputs alone.
  GpuBuffer attn_out, ffn_out;
  NormStats post_attn, post_ffn;   // double placement's post_attn_norm, post_ffn_norm
  GpuBuffer ln2;      // (N, C) T   the feed-forward's input in serial blocks: norm2(x_mid) or x_mid in T
  NormStats norm2;
  FfnBuffers ffn;     // empty with recomputation (the layers share Impl::ffn_shared) or MoE
  GpuMoeSaved moe;    // the mixture of experts' state (moe only)
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

  // Arenas (layout.total floats) and the working copy of the weights in T, which the matrix
  // products read (fp32 too: the copy's order fuses products; norms and biases read the arena).
  GpuBuffer params, grads, m, v, params_copy;
  // Per parameter tensor, its offset in params_copy: the arena's order except that each layer's
  // k_proj and v_proj follow its q_proj, and each w3 its w1, so that [Wq; Wk; Wv] is one
  // (Q + 2K, C) matrix and [W1; W3] one (2F, C) matrix. copy_at maps arena offsets to copy offsets.
  std::vector<std::int64_t> copy_offset;
  std::unordered_map<std::int64_t, std::int64_t> copy_at;
  ModelWeights w, g;   // views of params and grads by name (g: with backward only)
  GpuBuffer rope_cos, rope_sin;   // (context, D/2)
  GpuBuffer sinusoid;             // (context, C) with position "sinusoidal"

  // Activations (see LayerBuffers); resid[2l] is block l's input, resid[2l+1] its middle,
  // resid[2L] the final residual stream. All (N, C) f32.
  std::vector<GpuBuffer> resid;
  std::vector<LayerBuffers> layers;
  FfnBuffers ffn_shared;   // with recomputation
  GpuMoeScratch moe_scratch;
  GpuBuffer ln_final, logits, losses;   // (N, C) T, (N, V) T, (N)
  NormStats norm_final;
  // Backward scratch, live only inside one backward pass.
  GpuBuffer dresid;      // (N, C) f32  gradient of the residual stream
  GpuBuffer dresid_t;    // (N, C) T    its copy for the matrix products (bf16 only)
  GpuBuffer dln;         // (N, C) f32  gradient of a sublayer's input
  GpuBuffer dln_ffn;     // (N, C) f32  parallel blocks: the feed-forward's share of ln1's gradient
  GpuBuffer dsub, dsub_t;   // (N, C) f32, T  post and double placements: gradient of a sublayer's output
  GpuBuffer dattn;       // (N, Q) T
  GpuBuffer dqkv;        // (N, Q + 2K) T
  GpuBuffer dh;          // (N, F) T
  GpuBuffer dab;         // (N, 2F) T  [da | db]
  GpuBuffer delta;       // the attention backward's scratch (delta = rowsum(dO ⊙ O), (B, H, T) f32, and more)
  GpuBuffer partials;    // (kRmsnormPartials, max(C, Q, F, 2D)) f32: the column sums' partials

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
};

namespace {

// In a profiled step, an event after each part of the step: the time since the previous mark is
// the part's. Free otherwise.
void mark(GpuModel::Impl& m, const char* part) {
  if (!m.profile) return;
  cudaEvent_t e = nullptr;
  SLM_CUDA_CHECK(cudaEventCreate(&e));
  SLM_CUDA_CHECK(cudaEventRecord(e, m.stream));
  m.profile->emplace_back(part, e);
}

// The working copy of the parameter tensor whose fp32 master is p (a pointer of m.w).
template <typename T>
const T* working(const GpuModel::Impl& m, const float* p) {
  return m.params_copy.as<T>() + m.copy_at.at(p - m.params.as<float>());
}

template <typename T>
T* buf(const GpuBuffer& b) { return b.as<T>(); }

// A typed null for the optional T copies of the kernels' outputs.
template <typename T>
T* copy_of(const GpuBuffer& b) { return b.data() ? b.as<T>() : nullptr; }

FfnBuffers& ffn_of(GpuModel::Impl& m, std::int64_t l) { return m.o.recompute ? m.ffn_shared : m.layers[l].ffn; }

bool post_placement(const ModelConfig& c) { return c.norm_placement == NormPlacement::post; }
// ln1 and ln2 normalise the sublayers' inputs (pre and double placements); in post placement they
// follow the residual sums, and without norms there are none.
bool pre_norms(const ModelConfig& c) { return c.has_norms() && !post_placement(c); }

// out (N, C) = the model's norm of x (N, C) f32 with weights w: ln1, ln2, ln_final, post_*_norm.
template <typename TO>
void norm_forward(GpuModel::Impl& m, TO* out, NormStats& s, const float* x, const NormWeights& w, std::int64_t N) {
  const std::int64_t C = m.c.d_model;
  if (m.c.norm == Norm::layernorm)
    layernorm_forward_cuda<TO>(out, buf<float>(s.mean), buf<float>(s.rstd), x, w.weight, w.bias, N, C, m.stream);
  else
    rmsnorm_forward_cuda<TO>(out, buf<float>(s.rstd), x, w.weight, N, C, m.stream);
  mark(m, "norm forward");
}

// dx (N, C) += or = (acc) the gradient of the norm's input x from dy (N, C) f32, dx_copy (may be
// null) the new dx in T; the weight gradients accumulate into gw.
template <typename T>
void norm_backward(GpuModel::Impl& m, float* dx, T* dx_copy, Accumulate acc, const float* dy, const float* x,
                   const NormWeights& w, const NormWeights& gw, const NormStats& s, std::int64_t N) {
  const std::int64_t C = m.c.d_model;
  if (m.c.norm == Norm::layernorm) {
    layernorm_backward_cuda<T>(dx, dx_copy, gw.weight, gw.bias, buf<float>(m.partials), dy, x, w.weight,
                               buf<float>(s.mean), buf<float>(s.rstd), N, C, acc, m.stream);
  } else {
    if (acc == Accumulate::no) SLM_CUDA_CHECK(cudaMemsetAsync(dx, 0, static_cast<std::size_t>(N * C * 4), m.stream));
    rmsnorm_backward_cuda<T>(dx, dx_copy, gw.weight, buf<float>(m.partials), dy, x, w.weight, buf<float>(s.rstd), N,
                             C, m.stream);
  }
  mark(m, "norm backward");
}

// y (n) += x (n), f32, and y_copy (may be null) = y in T: dropout_forward_cuda with p = 0, which
// is exactly this (variant_ops_cuda.h).
template <typename T>
void add_into(GpuModel::Impl& m, float* y, T* y_copy, const float* x, std::int64_t n) {
  dropout_forward_cuda<T>(y, y_copy, y, x, n, Dropout{}, m.stream);
  mark(m, "residual add");
}

// The working-precision copy of an f32 activation that no norm writes (no norms, post placement).
template <typename T>
void to_working(GpuModel::Impl& m, T* dst, const float* src, std::int64_t n) {
  convert_cuda<T>(dst, src, n, m.stream);
  mark(m, "convert");
}

// The mixture of experts' weights and gradients of layer l.
template <typename T>
GpuMoeWeights<T> moe_weights(const GpuModel::Impl& m, std::int64_t l) {
  return moe_weights_at<T>(m.params_copy.as<T>(), m.copy_offset, m.layout, m.c, l);
}

// The dense feed-forward's up projections and activation for layer l from its input x (N, C):
// ab, h (forward, and backward when recomputing). [W1; W3] is one matrix of the working copy: one
// product; the biases follow it as separate passes.
template <typename T>
void ffn_up(GpuModel::Impl& m, std::int64_t l, const T* x, std::int64_t N) {
  const ModelConfig& c = m.c;
  const std::int64_t C = c.d_model, F = c.d_ff;
  const LayerWeights& lw = m.w.layers[l];
  FfnBuffers& f = ffn_of(m, l);
  const std::int64_t up = c.gated() ? 2 * F : F;
  gemm(m.gemm, buf<T>(f.ab), x, working<T>(m, lw.w1), linear_shape(N, C, up), 1.0f, 0.0f, m.stream);
  if (lw.b1) {
    bias_forward_cuda<T>(buf<T>(f.ab), lw.b1, N, F, up, m.stream);
    if (c.gated()) bias_forward_cuda<T>(buf<T>(f.ab) + F, lw.b3, N, F, up, m.stream);
  }
  mark(m, "matmul w1 w3 forward");
  if (c.ffn == FfnKind::swiglu) swiglu_forward_cuda(buf<T>(f.h), buf<T>(f.ab), N, F, m.stream);
  else if (c.gated()) gated_forward_cuda(buf<T>(f.h), buf<T>(f.ab), N, F, c.activation, m.stream);
  else activation_forward_cuda(buf<T>(f.h), buf<T>(f.ab), N * F, c.activation, m.stream);
  mark(m, "activation forward");
}

// The dense feed-forward's backward for layer l: dx (N, C) f32 overwritten with the gradient of
// its input x, from dy (N, C) (f32, and dy_t its copy in T) the gradient of its output.
template <typename T>
void ffn_backward(GpuModel::Impl& m, std::int64_t l, float* dx, const float* dy, const T* dy_t, const T* x,
                  std::int64_t N) {
  const ModelConfig& c = m.c;
  const std::int64_t C = c.d_model, F = c.d_ff;
  const LayerWeights& lw = m.w.layers[l];
  const LayerWeights& lg = m.g.layers[l];
  cudaStream_t s = m.stream;
  float* partials = buf<float>(m.partials);
  if (m.o.recompute) ffn_up<T>(m, l, x, N);   // a, b, h of this layer again
  const FfnBuffers& f = ffn_of(m, l);
  gemm(m.gemm, buf<T>(m.dh), dy_t, working<T>(m, lw.w2), linear_dx_shape(N, F, C), 1.0f, 0.0f, s);
  gemm(m.gemm, lg.w2, dy_t, buf<T>(f.h), linear_dw_shape(N, F, C), 1.0f, 1.0f, s);
  if (lg.b2) bias_backward_cuda<float>(lg.b2, partials, dy, N, C, C, s);
  mark(m, "matmul w2 backward");
  T* dab = buf<T>(m.dab);
  const std::int64_t up = c.gated() ? 2 * F : F;
  if (c.ffn == FfnKind::swiglu) swiglu_backward_cuda(dab, buf<T>(m.dh), buf<T>(f.ab), N, F, s);
  else if (c.gated()) gated_backward_cuda(dab, buf<T>(m.dh), buf<T>(f.ab), N, F, c.activation, s);
  else activation_backward_cuda(dab, buf<T>(m.dh), buf<T>(f.ab), N * F, c.activation, s);
  mark(m, "activation backward");
  if (lg.b1) {
    bias_backward_cuda<T>(lg.b1, partials, dab, N, F, up, s);
    if (c.gated()) bias_backward_cuda<T>(lg.b3, partials, dab + F, N, F, up, s);
  }
  // dx = [da | db] · [W1; W3]
  gemm(m.gemm, dx, static_cast<const T*>(dab), working<T>(m, lw.w1), linear_dx_shape(N, C, up), 1.0f, 0.0f, s);
  GemmShape dw = linear_dw_shape(N, C, F);
  dw.lda = up;
  gemm(m.gemm, lg.w1, static_cast<const T*>(dab), x, dw, 1.0f, 1.0f, s);
  if (c.gated()) gemm(m.gemm, lg.w3, static_cast<const T*>(dab + F), x, dw, 1.0f, 1.0f, s);
  mark(m, "matmul w1 w3 backward");
}

// The residual update after a sublayer with output y (the CPU's residual_forward): pre placement
// nothing (y is x_out, x_res added in the product's epilogue); post x_out = n(y) (y = x_res + the
// output, added the same way); double x_out = x_res + n(y). n: norm1/norm2 (post) or
// post_attn_norm/post_ffn_norm (double), with its statistics s.
template <typename T>
void residual_forward(GpuModel::Impl& m, float* x_out, const float* y, const float* x_res, const NormWeights& n,
                      NormStats& s, std::int64_t N) {
  if (m.c.norm_placement == NormPlacement::pre) return;
  norm_forward<float>(m, x_out, s, y, n, N);
  if (!post_placement(m.c)) add_into<T>(m, x_out, nullptr, x_res, N * m.c.d_model);
}

GpuAttentionShape attention_shape(const ModelConfig& c, std::int64_t B, std::int64_t T_, std::int64_t l) {
  return {.B = B, .T = T_, .H = c.num_heads, .D = c.d_head(), .Hkv = c.kv_heads(), .window = c.layer_window(l),
          .softcap = static_cast<float>(c.attn_softcap)};
}

// Forward over ids (B, T) into the activation buffers, then the classifier: losses (N) and, when
// grad_scale != 0, dlogits over the logits. The CPU's model_forward, step for step.
template <typename T>
void forward(GpuModel::Impl& m, const std::int32_t* ids, const std::int32_t* targets, std::int64_t B, std::int64_t T_,
             float grad_scale) {
  const ModelConfig& c = m.c;
  const std::int64_t N = B * T_, C = c.d_model, F = c.d_ff, V = c.vocab_size, Q = c.q_width(), K = c.kv_width();
  const std::int64_t L = c.num_layers;
  const bool pre = c.norm_placement == NormPlacement::pre, post = post_placement(c);
  cudaStream_t s = m.stream;
  const bool mma = std::is_same_v<T, Bf16> && attention_mma_supported(c.d_head());

  float* x0 = buf<float>(m.resid[0]);
  embedding_forward_cuda(x0, ids, m.w.embedding, N, C, s);
  if (c.position == Position::sinusoidal) position_add_forward_cuda(x0, buf<float>(m.sinusoid), N, T_, 0, C, s);
  if (c.position == Position::learned) position_add_forward_cuda(x0, m.w.position, N, T_, 0, C, s);
  mark(m, "embedding forward");
  for (std::int64_t l = 0; l < L; ++l) {
    LayerBuffers& a = m.layers[l];
    const LayerWeights& lw = m.w.layers[l];
    float* x_in = buf<float>(m.resid[2 * l]);
    float* x_mid = buf<float>(m.resid[2 * l + 1]);
    float* x_out = buf<float>(m.resid[2 * l + 2]);
    const GpuAttentionShape shape = attention_shape(c, B, T_, l);
    // attention sublayer on ln1 = norm1(x_in) (pre, double) or x_in (post, no norms)
    if (pre_norms(c)) norm_forward<T>(m, buf<T>(a.ln1), a.norm1, x_in, lw.norm1(), N);
    else to_working<T>(m, buf<T>(a.ln1), x_in, N * C);
    // q, k, v weights are consecutive in the working copy: one (Q + 2K, C) matrix
    gemm(m.gemm, buf<T>(a.qkv), buf<T>(a.ln1), working<T>(m, lw.wq), linear_shape(N, C, Q + 2 * K), 1.0f, 0.0f, s);
    if (lw.bq) {
      bias_forward_cuda<T>(buf<T>(a.qkv), lw.bq, N, Q, Q + 2 * K, s);
      bias_forward_cuda<T>(buf<T>(a.qkv) + Q, lw.bk, N, K, Q + 2 * K, s);
      bias_forward_cuda<T>(buf<T>(a.qkv) + Q + K, lw.bv, N, K, Q + 2 * K, s);
    }
    mark(m, "matmul qkv forward");
    if (c.qk_norm) {
      qk_norm_forward_cuda(buf<T>(a.qkv), buf<T>(a.qk_raw), buf<float>(a.rstd_qk), lw.q_norm, lw.k_norm, shape, s);
      mark(m, "qk-norm forward");
    }
    if (c.layer_rope(l)) {
      rope_qk_cuda(buf<T>(a.qkv), buf<float>(m.rope_cos), buf<float>(m.rope_sin), shape, RopeDirection::forward, s);
      mark(m, "rope forward");
    }
    if constexpr (std::is_same_v<T, Bf16>) {
      if (mma) attention_forward_mma(buf<T>(a.attn), buf<float>(a.lse), buf<T>(a.qkv), shape, s);
      else attention_forward_cuda(buf<T>(a.attn), buf<float>(a.lse), buf<T>(a.qkv), shape, s);
    } else {
      attention_forward_cuda(buf<T>(a.attn), buf<float>(a.lse), buf<T>(a.qkv), shape, s);
    }
    mark(m, "attention forward");
    // x_mid = x_in + y (pre) | norm1(x_in + y) (post) | x_in + post_attn_norm(y) (double), with
    // y = output_proj(attn); pre and post add x_in in the product's epilogue
    float* attn_y = pre ? x_mid : buf<float>(a.attn_out);
    const float* attn_res = pre || post ? x_in : nullptr;
    gemm(m.gemm, attn_y, buf<T>(a.attn), working<T>(m, lw.wo), linear_shape(N, Q, C), 1.0f, attn_res ? 1.0f : 0.0f, s,
         attn_res);
    if (lw.bo) bias_forward_cuda<float>(attn_y, lw.bo, N, C, C, s);
    mark(m, "matmul out_proj forward");
    residual_forward<T>(m, x_mid, attn_y, x_in, post ? lw.norm1() : lw.post_attn_norm, post ? a.norm1 : a.post_attn, N);
    // feed-forward sublayer on ln2 = norm2(x_mid) (serial pre, double), x_mid (post, no norms), or
    // the attention's input (parallel blocks: x_out = x_in + attn + ffn)
    const T* ffn_in = buf<T>(a.ln1);
    if (!c.parallel_block) {
      if (pre_norms(c)) norm_forward<T>(m, buf<T>(a.ln2), a.norm2, x_mid, lw.norm2(), N);
      else to_working<T>(m, buf<T>(a.ln2), x_mid, N * C);
      ffn_in = buf<T>(a.ln2);
    }
    float* ffn_y = pre ? x_out : buf<float>(a.ffn_out);
    const float* ffn_res = pre || post ? x_mid : nullptr;
    if (c.is_moe()) {
      moe_forward_cuda<T>(ffn_y, a.moe, m.moe_scratch, ffn_res, ffn_in, moe_weights<T>(m, l), c, N, MoeCapacity::apply,
                          m.gemm, s);
      mark(m, "mixture of experts forward");
    } else {
      ffn_up<T>(m, l, ffn_in, N);
      gemm(m.gemm, ffn_y, buf<T>(ffn_of(m, l).h), working<T>(m, lw.w2), linear_shape(N, F, C), 1.0f,
           ffn_res ? 1.0f : 0.0f, s, ffn_res);
      if (lw.b2) bias_forward_cuda<float>(ffn_y, lw.b2, N, C, C, s);
      mark(m, "matmul w2 forward");
    }
    residual_forward<T>(m, x_out, ffn_y, x_mid, post ? lw.norm2() : lw.post_ffn_norm, post ? a.norm2 : a.post_ffn, N);
  }
  const float* x_final = buf<float>(m.resid[2 * L]);
  if (c.has_norms()) norm_forward<T>(m, buf<T>(m.ln_final), m.norm_final, x_final, {m.w.ln_final, m.w.ln_final_bias}, N);
  else to_working<T>(m, buf<T>(m.ln_final), x_final, N * C);
  gemm(m.gemm, buf<T>(m.logits), buf<T>(m.ln_final), working<T>(m, m.w.lm_head), linear_shape(N, C, V), 1.0f, 0.0f,
       s);
  mark(m, "matmul lm_head forward");
  if (c.z_loss > 0 || c.logit_softcap > 0)
    classifier_extras_cuda(buf<T>(m.logits), buf<float>(m.losses), static_cast<float*>(nullptr), targets, N, V,
                           grad_scale,
                           {.z_loss = static_cast<float>(c.z_loss), .softcap = static_cast<float>(c.logit_softcap)}, s);
  else
    classifier_cuda(buf<T>(m.logits), buf<float>(m.losses), targets, N, V, grad_scale, s);
  mark(m, "classifier");
}

// The gradient of a sublayer's output y from dx = dL/dx_out, the residual update's backward (the
// CPU's residual_backward): pre placement dx itself; post (x_out = n(x_res + y)) n's input
// gradient, which is also x_res's, so dx becomes it; double (x_out = x_res + n(y)) n's input
// gradient, dx unchanged. Returns the gradient in f32 and in T.
template <typename T>
std::pair<const float*, const T*> sublayer_grad(GpuModel::Impl& m, const T* dx_t, const float* y, const NormWeights& n,
                                                const NormWeights& gn, const NormStats& st, std::int64_t N) {
  float* dx = buf<float>(m.dresid);
  if (m.c.norm_placement == NormPlacement::pre) return {dx, dx_t};
  float* dsub = buf<float>(m.dsub);
  T* dsub_t = copy_of<T>(m.dsub_t);
  norm_backward<T>(m, dsub, dsub_t, Accumulate::no, dx, y, n, gn, st, N);
  if (post_placement(m.c))
    SLM_CUDA_CHECK(cudaMemcpyAsync(dx, dsub, static_cast<std::size_t>(N * m.c.d_model * 4), cudaMemcpyDeviceToDevice,
                                   m.stream));
  if constexpr (std::is_same_v<T, float>) return {dsub, dsub};
  else return {dsub, dsub_t};
}

// Backward of the pass forward() just made with grad_scale != 0 (the logits hold dlogits);
// parameter gradients are accumulated into m.grads. The CPU's model_backward, step for step.
template <typename T>
void backward(GpuModel::Impl& m, const TokenGroups& groups, std::int64_t B, std::int64_t T_, float grad_scale) {
  const ModelConfig& c = m.c;
  const std::int64_t N = B * T_, C = c.d_model, V = c.vocab_size, Q = c.q_width(), K = c.kv_width();
  const std::int64_t L = c.num_layers;
  cudaStream_t s = m.stream;
  const bool mma = std::is_same_v<T, Bf16> && attention_mma_supported(c.d_head());
  const ModelWeights& w = m.w;
  const ModelWeights& g = m.g;
  float* dresid = buf<float>(m.dresid);
  // The residual gradient as the matrix products read it: fp32 itself, or its bf16 copy.
  T* dresid_t = copy_of<T>(m.dresid_t);
  const T* dres_in = nullptr;
  if constexpr (std::is_same_v<T, float>) dres_in = dresid;
  else dres_in = dresid_t;
  float* dln = buf<float>(m.dln);
  float* partials = buf<float>(m.partials);
  // dresid += x (the gradient of a sublayer's input that no norm took), refreshing its copy
  auto add_to_dresid = [&](const float* x) { add_into<T>(m, dresid, dresid_t, x, N * C); };

  // logits → final norm
  const T* dlogits = buf<T>(m.logits);
  float* dfinal = c.has_norms() ? dln : dresid;
  gemm(m.gemm, dfinal, dlogits, working<T>(m, w.lm_head), linear_dx_shape(N, C, V), 1.0f, 0.0f, s);
  gemm(m.gemm, g.lm_head, dlogits, buf<T>(m.ln_final), linear_dw_shape(N, C, V), 1.0f, 1.0f, s);
  mark(m, "matmul lm_head backward");
  if (c.has_norms())
    norm_backward<T>(m, dresid, dresid_t, Accumulate::no, dln, buf<float>(m.resid[2 * L]), {w.ln_final, w.ln_final_bias},
                     {g.ln_final, g.ln_final_bias}, m.norm_final, N);
  else if (dresid_t)
    to_working<T>(m, dresid_t, dresid, N * C);

  for (std::int64_t l = L; l-- > 0;) {
    LayerBuffers& a = m.layers[l];
    const LayerWeights& lw = w.layers[l];
    const LayerWeights& lg = g.layers[l];
    const GpuAttentionShape shape = attention_shape(c, B, T_, l);
    // feed-forward sublayer; dresid holds dL/dx_out
    const bool dbl = c.norm_placement == NormPlacement::pre_and_post;
    const auto [dffn_y, dffn_y_t] =
        sublayer_grad<T>(m, dres_in, buf<float>(a.ffn_out), dbl ? lw.post_ffn_norm : lw.norm2(),
                         dbl ? lg.post_ffn_norm : lg.norm2(), dbl ? a.post_ffn : a.norm2, N);
    const T* ffn_in = buf<T>(c.parallel_block ? a.ln1 : a.ln2);
    float* dffn_in = c.parallel_block ? buf<float>(m.dln_ffn) : dln;
    if (c.is_moe()) {
      moe_backward_cuda<T>(dffn_in, moe_grads_at(m.grads.as<float>(), m.layout, c, l), m.moe_scratch, a.moe, dffn_y_t,
                           ffn_in, moe_weights<T>(m, l), c,
                           static_cast<double>(grad_scale) * static_cast<double>(N) * c.moe.aux_loss, m.gemm, s);
      mark(m, "mixture of experts backward");
    } else {
      ffn_backward<T>(m, l, dffn_in, dffn_y, dffn_y_t, ffn_in, N);
    }
    if (!c.parallel_block) {
      if (pre_norms(c))
        norm_backward<T>(m, dresid, dresid_t, Accumulate::yes, dln, buf<float>(m.resid[2 * l + 1]), lw.norm2(),
                         lg.norm2(), a.norm2, N);
      else
        add_to_dresid(dln);
    }
    // attention sublayer; dresid holds dL/dx_mid
    const auto [dattn_y, dattn_y_t] =
        sublayer_grad<T>(m, dres_in, buf<float>(a.attn_out), dbl ? lw.post_attn_norm : lw.norm1(),
                         dbl ? lg.post_attn_norm : lg.norm1(), dbl ? a.post_attn : a.norm1, N);
    gemm(m.gemm, buf<T>(m.dattn), dattn_y_t, working<T>(m, lw.wo), linear_dx_shape(N, Q, C), 1.0f, 0.0f, s);
    gemm(m.gemm, lg.wo, dattn_y_t, buf<T>(a.attn), linear_dw_shape(N, Q, C), 1.0f, 1.0f, s);
    if (lg.bo) bias_backward_cuda<float>(lg.bo, partials, dattn_y, N, C, C, s);
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
    if (c.layer_rope(l)) {
      rope_qk_cuda(buf<T>(m.dqkv), buf<float>(m.rope_cos), buf<float>(m.rope_sin), shape, RopeDirection::inverse, s);
      mark(m, "rope backward");
    }
    if (c.qk_norm) {
      qk_norm_backward_cuda(buf<T>(m.dqkv), lg.q_norm, lg.k_norm, partials, buf<T>(a.qk_raw), buf<float>(a.rstd_qk),
                            lw.q_norm, lw.k_norm, shape, s);
      mark(m, "qk-norm backward");
    }
    const T* dqkv = buf<T>(m.dqkv);
    const T* attn_in = buf<T>(a.ln1);
    if (lg.bq) {
      bias_backward_cuda<T>(lg.bq, partials, dqkv, N, Q, Q + 2 * K, s);
      bias_backward_cuda<T>(lg.bk, partials, dqkv + Q, N, K, Q + 2 * K, s);
      bias_backward_cuda<T>(lg.bv, partials, dqkv + Q + K, N, K, Q + 2 * K, s);
    }
    gemm(m.gemm, dln, dqkv, working<T>(m, lw.wq), linear_dx_shape(N, C, Q + 2 * K), 1.0f, 0.0f, s);
    if (lg.wk == lg.wq + Q * C && lg.wv == lg.wk + K * C) {   // consecutive in the arena (no biases): one product
      gemm(m.gemm, lg.wq, dqkv, attn_in, linear_dw_shape(N, C, Q + 2 * K), 1.0f, 1.0f, s);
    } else {
      GemmShape dq = linear_dw_shape(N, C, Q), dkv = linear_dw_shape(N, C, K);
      dq.lda = dkv.lda = Q + 2 * K;
      gemm(m.gemm, lg.wq, dqkv, attn_in, dq, 1.0f, 1.0f, s);
      gemm(m.gemm, lg.wk, dqkv + Q, attn_in, dkv, 1.0f, 1.0f, s);
      gemm(m.gemm, lg.wv, dqkv + Q + K, attn_in, dkv, 1.0f, 1.0f, s);
    }
    mark(m, "matmul qkv backward");
    if (c.parallel_block) add_into<T>(m, dln, nullptr, buf<float>(m.dln_ffn), N * C);   // ln1 feeds both sublayers
    if (pre_norms(c))
      norm_backward<T>(m, dresid, dresid_t, Accumulate::yes, dln, buf<float>(m.resid[2 * l]), lw.norm1(), lg.norm1(),
                       a.norm1, N);
    else
      add_to_dresid(dln);
  }
  if (c.position == Position::learned) position_add_backward_cuda(g.position, dresid, N, T_, 0, C, s);
  embedding_backward_cuda(g.embedding, dresid, groups, std::min(N, V), C, s);
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
    backward<T>(m, groups_of(in, N), B, T_, scale);
  }
  optimizer_step_cuda<T>(m.params.as<float>(), m.params_copy.as<T>(), m.grads.as<float>(), m.m.as<float>(), m.v.as<float>(),
                         m.layout.total, m.chunks.as<AdamWChunk>(), m.num_chunks, m.opt_scratch.as<double>(), stats,
                         m.input_index(), m.opt, s);
  mark(m, "optimizer (norm, clip, AdamW)");
  SLM_CUDA_CHECK(cudaMemcpyAsync(m.stats_host->ptr, stats, sizeof(GpuStepStats), cudaMemcpyDeviceToHost, s));
}

// Logits (rows × V) of the working precision, as floats on the host; with "logit_softcap" the
// capped values the model's distribution uses (the classifier caps on the fly, leaving the raw
// products in place).
void download_logits(GpuModel::Impl& m, std::int64_t first_row, std::int64_t rows, float* out) {
  const std::int64_t V = m.c.vocab_size, n = rows * V;
  auto cap = [&](auto* logits) {
    if (m.c.logit_softcap > 0) softcap_cuda(logits + first_row * V, n, static_cast<float>(m.c.logit_softcap), m.stream);
    SLM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  };
  if (m.o.precision == GpuPrecision::fp32) {
    cap(m.logits.as<float>());
    copy_from_gpu(out, m.logits.as<float>() + first_row * V, n * 4);
    return;
  }
  cap(m.logits.as<Bf16>());
  std::vector<Bf16> tmp(static_cast<std::size_t>(n));
  copy_from_gpu(tmp.data(), m.logits.as<Bf16>() + first_row * V, n * 2);
  for (std::int64_t i = 0; i < n; ++i) out[i] = to_float(tmp[i]);
}

}  // namespace

GpuModel::GpuModel(const ModelConfig& c, const GpuModelOptions& o) : impl_(std::make_unique<Impl>()) {
  if (const std::string fields = gpu_unsupported_fields(c); !fields.empty())
    fail("the GPU path does not implement model field ", fields, " (as this model sets it: ", to_json(c).dump(),
         "); train it on the CPU with --device cpu");
  if (c.is_moe()) moe_check_supported_cuda(c);
  Impl& m = *impl_;
  m.c = c;
  m.o = o;
  m.layout = param_layout(c);
  const std::int64_t B = o.batch, T_ = c.context_length, N = B * T_, C = c.d_model, F = c.d_ff, V = c.vocab_size,
                     H = c.num_heads, L = c.num_layers, D = c.d_head(), Q = c.q_width(), K = c.kv_width(),
                     Hkv = c.kv_heads();
  m.N = N;
  m.elem = o.precision == GpuPrecision::bf16 ? 2 : 4;
  const std::int64_t e = m.elem, P = m.layout.total;
  SLM_CUDA_CHECK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
  SLM_CUDA_CHECK(cudaEventCreateWithFlags(&m.done, cudaEventDisableTiming));

  m.params = GpuBuffer(P * 4);
  m.params_copy = GpuBuffer(P * e);
  // The copy's order: the arena's, with k_proj and v_proj right after each q_proj and each w3
  // right after its w1 (the experts' too).
  const std::vector<ParamSpec>& specs = m.layout.specs;
  m.copy_offset.assign(specs.size(), -1);
  std::int64_t next = 0;
  auto place = [&](std::size_t k) {
    m.copy_offset[k] = next;
    m.copy_at[specs[k].offset] = next;
    next += specs[k].numel();
  };
  auto ends_with = [](const std::string& s, const std::string& tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
  };
  for (std::size_t k = 0; k < specs.size(); ++k) {
    if (m.copy_offset[k] >= 0) continue;
    place(k);
    const std::string& name = specs[k].name;
    const std::string q = "attn.q_proj.weight", w1 = "w1.weight";
    if (ends_with(name, q)) {
      const std::string stem = name.substr(0, name.size() - q.size()) + "attn.";
      place(m.layout.index.at(stem + "k_proj.weight"));
      place(m.layout.index.at(stem + "v_proj.weight"));
    } else if (ends_with(name, w1)) {
      const auto w3 = m.layout.index.find(name.substr(0, name.size() - w1.size()) + "w3.weight");
      if (w3 != m.layout.index.end()) place(w3->second);
    }
  }
  SLM_CHECK(next == P);
  m.w = model_weights(m.layout, m.params.as<float>());
  if (o.with_backward) {
    m.grads = GpuBuffer(P * 4);
    m.m = GpuBuffer(P * 4);
    m.v = GpuBuffer(P * 4);
    SLM_CUDA_CHECK(cudaMemset(m.grads.data(), 0, static_cast<std::size_t>(P * 4)));
    SLM_CUDA_CHECK(cudaMemset(m.m.data(), 0, static_cast<std::size_t>(P * 4)));
    SLM_CUDA_CHECK(cudaMemset(m.v.data(), 0, static_cast<std::size_t>(P * 4)));
    m.g = model_weights(m.layout, m.grads.as<float>());
  }
  auto upload = [](const std::vector<float>& host) {
    GpuBuffer b(static_cast<std::int64_t>(host.size()) * 4);
    copy_to_gpu(b.data(), host.data(), b.bytes());
    return b;
  };
  const RopeTable rope = make_rope_table(c.rope_theta, D, T_);
  m.rope_cos = upload(rope.cos);
  m.rope_sin = upload(rope.sin);
  if (c.position == Position::sinusoidal) m.sinusoid = upload(sinusoidal_table(T_, C));

  const bool layernorm = c.norm == Norm::layernorm;
  auto norm_stats = [&] { return NormStats{layernorm ? GpuBuffer(N * 4) : GpuBuffer(), GpuBuffer(N * 4)}; };
  const std::int64_t up = c.gated() ? 2 * F : F;
  for (std::int64_t i = 0; i <= 2 * L; ++i) m.resid.emplace_back(N * C * 4);
  m.layers.resize(static_cast<std::size_t>(L));
  for (LayerBuffers& a : m.layers) {
    a.ln1 = GpuBuffer(N * C * e);
    if (c.has_norms()) a.norm1 = norm_stats();
    a.qkv = GpuBuffer(N * (Q + 2 * K) * e);
    if (c.qk_norm) {
      a.qk_raw = GpuBuffer(N * (Q + K) * e);
      a.rstd_qk = GpuBuffer(N * (H + Hkv) * 4);
    }
    a.attn = GpuBuffer(N * Q * e);
    a.lse = GpuBuffer(B * H * T_ * 4);
    if (c.norm_placement != NormPlacement::pre) {
      a.attn_out = GpuBuffer(N * C * 4);
      a.ffn_out = GpuBuffer(N * C * 4);
    }
    if (c.norm_placement == NormPlacement::pre_and_post) {
      a.post_attn = norm_stats();
      a.post_ffn = norm_stats();
    }
    if (!c.parallel_block) {
      a.ln2 = GpuBuffer(N * C * e);
      if (c.has_norms()) a.norm2 = norm_stats();
    }
    if (c.is_moe()) a.moe = GpuMoeSaved(c, N, e, MoeCapacity::apply);
    else if (!o.recompute) a.ffn = {GpuBuffer(N * up * e), GpuBuffer(N * F * e)};
  }
  if (c.is_moe()) m.moe_scratch = GpuMoeScratch(c, N, e, MoeCapacity::apply, o.with_backward);
  else if (o.recompute) m.ffn_shared = {GpuBuffer(N * up * e), GpuBuffer(N * F * e)};
  m.ln_final = GpuBuffer(N * C * e);
  if (c.has_norms()) m.norm_final = norm_stats();
  m.logits = GpuBuffer(N * V * e);
  m.losses = GpuBuffer(N * 4);
  if (o.with_backward) {
    m.dresid = GpuBuffer(N * C * 4);
    if (o.precision == GpuPrecision::bf16) m.dresid_t = GpuBuffer(N * C * e);
    m.dln = GpuBuffer(N * C * 4);
    if (c.parallel_block) m.dln_ffn = GpuBuffer(N * C * 4);
    if (c.norm_placement != NormPlacement::pre) {
      m.dsub = GpuBuffer(N * C * 4);
      if (o.precision == GpuPrecision::bf16) m.dsub_t = GpuBuffer(N * C * e);
    }
    m.dattn = GpuBuffer(N * Q * e);
    m.dqkv = GpuBuffer(N * (Q + 2 * K) * e);
    if (!c.is_moe()) {
      m.dh = GpuBuffer(N * F * e);
      m.dab = GpuBuffer(N * up * e);
    }
    m.delta = GpuBuffer(attention_backward_scratch_floats({.B = B, .T = T_, .H = H, .D = D}) * 4);
    m.partials = GpuBuffer(kRmsnormPartials * std::max({C, Q, F, 2 * D}) * 4);
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
  for (std::size_t k = 0; k < m.layout.specs.size(); ++k) {
    const float* src = m.params.as<float>() + m.layout.specs[k].offset;
    const std::int64_t n = m.layout.specs[k].numel();
    if (m.o.precision == GpuPrecision::bf16) convert_cuda(m.params_copy.as<Bf16>() + m.copy_offset[k], src, n, m.stream);
    else convert_cuda(m.params_copy.as<float>() + m.copy_offset[k], src, n, m.stream);
  }
  SLM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
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
    backward<Bf16>(m, groups_of(in, N), B, T_, scale);
  } else {
    scratchlm::forward<float>(m, in, in + N, B, T_, scale);
    backward<float>(m, groups_of(in, N), B, T_, scale);
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
  auto stats = [&](const NormStats& n) { return sum({&n.mean, &n.rstd}); };
  for (const LayerBuffers& a : m.layers)
    saved += sum({&a.ln1, &a.qkv, &a.qk_raw, &a.rstd_qk, &a.attn, &a.lse, &a.attn_out, &a.ffn_out, &a.ln2, &a.ffn.ab,
                  &a.ffn.h}) +
             stats(a.norm1) + stats(a.post_attn) + stats(a.post_ffn) + stats(a.norm2) +
             static_cast<double>(m.c.is_moe() ? a.moe.bytes() : 0);
  saved += sum({&m.ffn_shared.ab, &m.ffn_shared.h, &m.ln_final, &m.losses}) + stats(m.norm_final);
  const double scratch = sum({&m.dresid, &m.dresid_t, &m.dln, &m.dln_ffn, &m.dsub, &m.dsub_t, &m.dattn, &m.dqkv,
                              &m.dh, &m.dab, &m.delta, &m.partials}) +
                         static_cast<double>(m.c.is_moe() ? m.moe_scratch.bytes() : 0);
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
