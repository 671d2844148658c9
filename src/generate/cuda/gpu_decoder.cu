// The GPU decoder (see generate/gpu_decoder.h): weights, cache and buffers; the prefill, which is
// the GPU model's forward (model/cuda/gpu_model.cu) over one prompt with its keys and values kept;
// the decode step, recorded once into a CUDA graph; and the host loop of generate().
//
// The step with our kernels (DecoderGemm::own), 5 launches per layer + 2:
//   qkv      = rmsnorm(x)·[Wq; Wk; Wv]ᵀ, RoPE on q, k at each slot's position, k, v into the cache
//   attn     = attention(q, cache)                                    (split over the keys)
//   x       += attn·Woᵀ                        (and the sums of squares of x's tiles for the next norm)
//   h        = silu(rmsnorm(x)·W1ᵀ) ⊙ rmsnorm(x)·W3ᵀ
//   x       += h·W2ᵀ
//   logits   = rmsnorm_final(x)·lm_headᵀ;  sample → the next token, its embedding into x
// With DecoderGemm::cublas the same step is 9 launches per layer + 4: the norms, RoPE and the
// cache write, and SwiGLU are kernels of their own around cuBLASLt products (the residual adds
// stay in cuBLASLt's epilogue).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <deque>
#include <limits>
#include <utility>

#include "generate/cuda/decode_kernels.h"
#include "generate/gpu_decoder.h"
#include "ops/cuda/attention_cuda.h"
#include "ops/cuda/gemm_cuda.h"
#include "ops/cuda/ops_cuda.h"
#include "ops/rope.h"
#include "tensor/cuda/cuda_check.cuh"
#include "tensor/gpu_buffer.h"
#include "util/progress.h"

namespace scratchlm {

const char* decoder_gemm_name(DecoderGemm g) { return g == DecoderGemm::own ? "own kernels" : "cuBLASLt"; }

GpuDecoderOptions fastest_decoder_options(std::int64_t batch, std::int64_t d_model) {
  if (batch > own_kernels_up_to(d_model)) return {.max_batch = batch, .gemm = DecoderGemm::cublas};
  int device = 0, major = 0;
  const bool known = cudaGetDevice(&device) == cudaSuccess &&
                     cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess;
  if (!known) cudaGetLastError();   // the decoder's own checks will report a missing device
  return {.max_batch = batch, .gemm = DecoderGemm::own, .pdl = known && major >= 9};
}

namespace {

// Host memory: pinned (fast asynchronous copies), optionally mapped into the device's address space
// (the device writes the step records there directly). Move-only.
struct HostBuffer {
  void* ptr = nullptr;
  void* device = nullptr;   // the mapped address, for mapped buffers
  HostBuffer() = default;
  HostBuffer(std::int64_t bytes, bool mapped) {
    SLM_CUDA_CHECK(cudaHostAlloc(&ptr, static_cast<std::size_t>(bytes), mapped ? cudaHostAllocMapped : 0));
    std::memset(ptr, 0, static_cast<std::size_t>(bytes));
    if (mapped) SLM_CUDA_CHECK(cudaHostGetDevicePointer(&device, ptr, 0));
  }
  ~HostBuffer() {
    if (ptr) cudaFreeHost(ptr);
  }
  HostBuffer(HostBuffer&& o) noexcept : ptr(std::exchange(o.ptr, nullptr)), device(std::exchange(o.device, nullptr)) {}
  HostBuffer& operator=(HostBuffer&& o) noexcept {
    std::swap(ptr, o.ptr);
    std::swap(device, o.device);
    return *this;
  }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr); }
};

struct Event {
  cudaEvent_t e = nullptr;
  Event() { SLM_CUDA_CHECK(cudaEventCreate(&e)); }
  ~Event() {
    if (e) cudaEventDestroy(e);
  }
  Event(const Event&) = delete;
};

// A layer's weights: bf16 matrices in w16, fp32 norm gains in w32.
struct LayerWeights16 {
  const Bf16* qkv;   // (3C, C) = [Wq; Wk; Wv]
  const Bf16* o;     // (C, C)
  const Bf16* w13;   // (2F, C) = [W1; W3]
  const Bf16* w2;    // (C, F)
  const float* ln1;  // (C)
  const float* ln2;  // (C)
};

constexpr std::int64_t kRing = 64;   // records per slot kept in the ring (≥ the steps the host runs ahead + 1)

}  // namespace

struct GpuDecoder::Impl {
  ModelConfig c;
  GpuDecoderOptions o;
  int B = 0, T = 0, C = 0, H = 0, Hkv = 0, D = 0, F = 0, V = 0, L = 0;
  int window = 0;   // 0: attention over every cached position (a sliding window would set it)
  cudaStream_t stream = nullptr;
  GemmContext gemm;

  GpuBuffer w16, w32;   // bf16 matrices; fp32 embedding (V, C) and gains
  std::vector<LayerWeights16> layers;
  const Bf16* lm_head = nullptr;      // (V, C)
  const float* embedding = nullptr;   // (V, C) fp32
  const float* ln_final = nullptr;    // (C)
  GpuBuffer rope_cos, rope_sin;       // (T, D/2)
  GpuBuffer k_cache, v_cache;         // (L, B, Hkv, T, D) bf16

  // The step's buffers (lifetime: one step; x and ss carry the next token's embedding between steps).
  GpuBuffer x;        // (B, C) f32 residual stream
  GpuBuffer ss;       // (B, ceil(C/16)) f32 sums of squares of x's tiles
  GpuBuffer q;        // (B, C) f32 queries after RoPE
  GpuBuffer attn;     // (B, C) bf16
  GpuBuffer h;        // (B, F) bf16
  GpuBuffer logits;   // (B, V) f32: the latest logits of each slot (prefill or step)
  GpuBuffer attn_partials, attn_counters;
  GpuBuffer ln, rstd, qkv, ab;   // cuBLASLt step only: (B, C) bf16, (B), (B, 3C) bf16, (B, 2F) bf16
  // Prefill of one prompt of up to T tokens (lifetime: one prefill).
  GpuBuffer p_ids, p_x, p_ln, p_rstd, p_qkv, p_attn, p_lse, p_ab, p_h;

  GpuBuffer slots;    // (B) SlotState
  GpuBuffer params;   // SampleParams
  HostBuffer records;                  // (kRing, B) SlotRecord, mapped
  HostBuffer stage_ids, stage_slots;   // pinned: a prompt (T ints) and a SlotState per slot
  HostBuffer stage_params;
  std::vector<std::int64_t> consumed;  // records read per slot

  cudaGraphExec_t graph = nullptr;
  DecodeTimes times;
  std::vector<std::pair<const char*, cudaEvent_t>>* profile = nullptr;

  Bf16* k_layer(std::int64_t l) const { return k_cache.as<Bf16>() + l * B * Hkv * static_cast<std::int64_t>(T) * D; }
  Bf16* v_layer(std::int64_t l) const { return v_cache.as<Bf16>() + l * B * Hkv * static_cast<std::int64_t>(T) * D; }
  SlotState* slot_states() const { return slots.as<SlotState>(); }
  SlotRecord* device_records() const { return static_cast<SlotRecord*>(records.device); }
  const SlotRecord& record(std::int64_t slot, std::int64_t index) const {
    return records.as<SlotRecord>()[(index % kRing) * B + slot];
  }
};

namespace {

using Impl = GpuDecoder::Impl;

void mark(Impl& m, const char* what) {
  if (!m.profile) return;
  cudaEvent_t e = nullptr;
  SLM_CUDA_CHECK(cudaEventCreate(&e));
  SLM_CUDA_CHECK(cudaEventRecord(e, m.stream));
  m.profile->emplace_back(what, e);
}

// The variant fields a config sets (to_json writes a variant field only when it is not the CS336
// default): `"qk_norm": true, "block": "parallel"`.
std::string variant_fields(const ModelConfig& c) {
  const nlohmann::ordered_json j = to_json(c);
  std::string out;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    if (key == "vocab_size" || key == "context_length" || key == "d_model" || key == "num_layers" ||
        key == "num_heads" || key == "d_ff" || key == "rope_theta")
      continue;
    out += str(out.empty() ? "" : ", ", "\"", key, "\": ", it.value().dump());
  }
  return out;
}

void check_config(const ModelConfig& c, const GpuDecoderOptions& o) {
  if (!c.is_default_architecture())
    fail("the GPU decoder has the CS336 architecture only so far (RMSNorm pre-norm, RoPE, SwiGLU, untied "
         "embeddings); this model sets ",
         variant_fields(c), ": generate on the CPU with --device cpu");
  if (c.d_model % 8 != 0) fail("the GPU decoder needs d_model a multiple of 8 (16-byte rows); it is ", c.d_model);
  if (c.d_ff % 8 != 0) fail("the GPU decoder needs d_ff a multiple of 8 (16-byte rows); it is ", c.d_ff);
  if (!decode_head_dim_supported(c.d_head()))
    fail("the GPU decoder has head dims 16, 32, 64 and 128; d_model / num_heads is ", c.d_head());
  if (o.max_batch < 1) fail("the GPU decoder's batch must be at least 1, got ", o.max_batch);
  if (o.gemm == DecoderGemm::own && o.max_batch > kDecodeMaxBatch)
    fail("the GPU decoder's own kernels take at most ", kDecodeMaxBatch, " sequences at once (got ", o.max_batch,
         "); use a smaller --batch-size or the cuBLASLt step");
  if (o.max_length < 0) fail("the GPU decoder's max_length must be >= 0");
  if (o.in_flight < 1 || o.in_flight >= kRing) fail("the GPU decoder's in_flight must be in 1..", kRing - 1);
  const std::int64_t T = o.max_length > 0 ? o.max_length : c.context_length;
  if (T > std::numeric_limits<int>::max() / 4 || c.vocab_size > (1 << 23))
    fail("the GPU decoder's cache length or vocabulary is too large");
}

// ---- the step ------------------------------------------------------------------------------------

// attn (B, C) = attention of each live slot's query against layer l's cache.
void record_attention(Impl& m, int l, bool pdl) {
  decode_attention_cuda({.out = m.attn.as<Bf16>(),
                         .q = m.q.as<float>(),
                         .k_cache = m.k_layer(l),
                         .v_cache = m.v_layer(l),
                         .slots = m.slot_states(),
                         .partials = m.attn_partials.as<float>(),
                         .counters = m.attn_counters.as<int>(),
                         .batch = m.B,
                         .H = m.H,
                         .Hkv = m.Hkv,
                         .D = m.D,
                         .capacity = m.T,
                         .window = m.window},
                        m.stream, pdl);
  mark(m, "attention");
}

void record_step_own(Impl& m, bool pdl) {
  cudaStream_t s = m.stream;
  const int B = m.B, C = m.C, F = m.F;
  float* x = m.x.as<float>();
  float* ss = m.ss.as<float>();
  for (int l = 0; l < m.L; ++l) {
    const LayerWeights16& w = m.layers[l];
    decode_linear_cuda({.input = LinearInput::rmsnorm,
                        .epilogue = LinearEpilogue::qkv,
                        .w = w.qkv,
                        .rows = (m.H + 2 * m.Hkv) * m.D,
                        .K = C,
                        .batch = B,
                        .x = x,
                        .ss = ss,
                        .gain = w.ln1,
                        .out = m.q.as<float>(),
                        .qkv = {.slots = m.slot_states(),
                                .k_cache = m.k_layer(l),
                                .v_cache = m.v_layer(l),
                                .rope_cos = m.rope_cos.as<float>(),
                                .rope_sin = m.rope_sin.as<float>(),
                                .H = m.H,
                                .Hkv = m.Hkv,
                                .D = m.D,
                                .capacity = m.T}},
                       s, pdl);
    mark(m, "qkv (rmsnorm, rope, cache write)");
    record_attention(m, l, pdl);
    decode_linear_cuda({.input = LinearInput::bf16,
                        .epilogue = LinearEpilogue::residual,
                        .w = w.o,
                        .rows = C,
                        .K = C,
                        .batch = B,
                        .act = m.attn.as<Bf16>(),
                        .out = x,
                        .ss_out = ss},
                       s, pdl);
    mark(m, "out_proj (+ residual)");
    decode_linear_cuda({.input = LinearInput::rmsnorm,
                        .epilogue = LinearEpilogue::swiglu,
                        .w = w.w13,
                        .rows = F,
                        .K = C,
                        .batch = B,
                        .x = x,
                        .ss = ss,
                        .gain = w.ln2,
                        .out_bf16 = m.h.as<Bf16>()},
                       s, pdl);
    mark(m, "w1 w3 (rmsnorm, swiglu)");
    decode_linear_cuda({.input = LinearInput::bf16,
                        .epilogue = LinearEpilogue::residual,
                        .w = w.w2,
                        .rows = C,
                        .K = F,
                        .batch = B,
                        .act = m.h.as<Bf16>(),
                        .out = x,
                        .ss_out = ss},
                       s, pdl);
    mark(m, "w2 (+ residual)");
  }
  decode_linear_cuda({.input = LinearInput::rmsnorm,
                      .epilogue = LinearEpilogue::store,
                      .w = m.lm_head,
                      .rows = m.V,
                      .K = C,
                      .batch = B,
                      .x = x,
                      .ss = ss,
                      .gain = m.ln_final,
                      .out = m.logits.as<float>()},
                     s, pdl);
  mark(m, "lm_head (rmsnorm)");
}

void record_step_cublas(Impl& m) {
  cudaStream_t s = m.stream;
  const std::int64_t B = m.B, C = m.C, F = m.F;
  float* x = m.x.as<float>();
  Bf16* ln = m.ln.as<Bf16>();
  for (int l = 0; l < m.L; ++l) {
    const LayerWeights16& w = m.layers[l];
    rmsnorm_forward_cuda(ln, m.rstd.as<float>(), x, w.ln1, B, C, s);
    mark(m, "rmsnorm");
    gemm(m.gemm, m.qkv.as<Bf16>(), static_cast<const Bf16*>(ln), w.qkv, linear_shape(B, C, (m.H + 2 * m.Hkv) * m.D),
         1.0f, 0.0f, s);
    mark(m, "matmul qkv");
    kv_write_cuda({.qkv = m.qkv.as<Bf16>(),
                   .rows = m.B,
                   .slot = 0,
                   .slots = m.slot_states(),
                   .q_out = m.q.as<float>(),
                   .rope_cos = m.rope_cos.as<float>(),
                   .rope_sin = m.rope_sin.as<float>(),
                   .k_cache = m.k_layer(l),
                   .v_cache = m.v_layer(l),
                   .H = m.H,
                   .Hkv = m.Hkv,
                   .D = m.D,
                   .capacity = m.T},
                  s);
    mark(m, "rope, cache write");
    record_attention(m, l, false);
    gemm(m.gemm, x, static_cast<const Bf16*>(m.attn.as<Bf16>()), w.o, linear_shape(B, C, C), 1.0f, 1.0f, s);
    mark(m, "matmul out_proj (+ residual)");
    rmsnorm_forward_cuda(ln, m.rstd.as<float>(), x, w.ln2, B, C, s);
    mark(m, "rmsnorm");
    gemm(m.gemm, m.ab.as<Bf16>(), static_cast<const Bf16*>(ln), w.w13, linear_shape(B, C, 2 * F), 1.0f, 0.0f, s);
    mark(m, "matmul w1 w3");
    swiglu_forward_cuda(m.h.as<Bf16>(), static_cast<const Bf16*>(m.ab.as<Bf16>()), B, F, s);
    mark(m, "swiglu");
    gemm(m.gemm, x, static_cast<const Bf16*>(m.h.as<Bf16>()), w.w2, linear_shape(B, F, C), 1.0f, 1.0f, s);
    mark(m, "matmul w2 (+ residual)");
  }
  rmsnorm_forward_cuda(ln, m.rstd.as<float>(), x, m.ln_final, B, C, s);
  mark(m, "rmsnorm");
  gemm(m.gemm, m.logits.as<float>(), static_cast<const Bf16*>(ln), m.lm_head, linear_shape(B, C, m.V), 1.0f, 0.0f, s);
  mark(m, "matmul lm_head");
}

void record_sample(Impl& m, int first_slot, int count, bool after_forward, bool pdl) {
  decode_sample_cuda({.slots = m.slot_states(),
                      .records = m.device_records(),
                      .ring = static_cast<int>(kRing),
                      .x = m.x.as<float>(),
                      .ss = m.ss.as<float>(),
                      .logits = m.logits.as<float>(),
                      .embedding = m.embedding,
                      .params = m.params.as<SampleParams>(),
                      .first_slot = first_slot,
                      .count = count,
                      .B_max = m.B,
                      .V = m.V,
                      .C = m.C,
                      .after_forward = after_forward},
                     m.stream, pdl);
  mark(m, "sample (+ next embedding)");
}

void record_step(Impl& m, bool pdl) {
  if (m.o.gemm == DecoderGemm::own) record_step_own(m, pdl);
  else record_step_cublas(m);
  record_sample(m, 0, m.B, true, pdl && m.o.gemm == DecoderGemm::own);
}

// ---- the prefill ---------------------------------------------------------------------------------

// Queues the prefill of `prompt` into `slot` (its state written from pinned memory first) and the
// sampling of its first token. The slot's pinned staging must not be in use by an earlier queued
// prefill of the same slot (generate() only refills a slot whose last record it has read).
void enqueue_prefill(Impl& m, int slot, const std::vector<std::int32_t>& prompt, std::int64_t max_new,
                     std::int64_t sequence) {
  cudaStream_t s = m.stream;
  const int P = static_cast<int>(prompt.size());
  const std::int64_t C = m.C, F = m.F, Cqkv = static_cast<std::int64_t>(m.H + 2 * m.Hkv) * m.D;
  std::int32_t* ids_host = m.stage_ids.as<std::int32_t>() + static_cast<std::int64_t>(slot) * m.T;
  std::memcpy(ids_host, prompt.data(), static_cast<std::size_t>(P) * 4);
  SlotState* st = m.stage_slots.as<SlotState>() + slot;
  *st = SlotState{.status = static_cast<std::int32_t>(SlotStatus::live),
                  .length = P,
                  .generated = 0,
                  .max_new = static_cast<std::int32_t>(std::min<std::int64_t>(max_new, std::numeric_limits<std::int32_t>::max())),
                  .events = static_cast<std::int32_t>(m.consumed[slot]),
                  .sequence = static_cast<std::int32_t>(sequence)};
  SLM_CUDA_CHECK(cudaMemcpyAsync(m.p_ids.data(), ids_host, static_cast<std::size_t>(P) * 4, cudaMemcpyHostToDevice, s));
  SLM_CUDA_CHECK(cudaMemcpyAsync(m.slot_states() + slot, st, sizeof(SlotState), cudaMemcpyHostToDevice, s));

  const std::int32_t* ids = m.p_ids.as<std::int32_t>();
  float* x = m.p_x.as<float>();
  Bf16* ln = m.p_ln.as<Bf16>();
  Bf16* qkv = m.p_qkv.as<Bf16>();
  Bf16* attn = m.p_attn.as<Bf16>();
  const GpuAttentionShape shape{1, P, m.H, m.D};
  embedding_forward_cuda(x, ids, m.embedding, P, C, s);
  for (int l = 0; l < m.L; ++l) {
    const LayerWeights16& w = m.layers[l];
    rmsnorm_forward_cuda(ln, m.p_rstd.as<float>(), x, w.ln1, P, C, s);
    gemm(m.gemm, qkv, static_cast<const Bf16*>(ln), w.qkv, linear_shape(P, C, Cqkv), 1.0f, 0.0f, s);
    rope_qk_cuda(qkv, m.rope_cos.as<float>(), m.rope_sin.as<float>(), shape, RopeDirection::forward, s);
    if (attention_mma_supported(m.D)) attention_forward_mma(attn, m.p_lse.as<float>(), qkv, shape, s);
    else attention_forward_cuda(attn, m.p_lse.as<float>(), static_cast<const Bf16*>(qkv), shape, s);
    kv_write_cuda({.qkv = qkv,
                   .rows = P,
                   .slot = slot,
                   .k_cache = m.k_layer(l),
                   .v_cache = m.v_layer(l),
                   .H = m.H,
                   .Hkv = m.Hkv,
                   .D = m.D,
                   .capacity = m.T},
                  s);
    gemm(m.gemm, x, static_cast<const Bf16*>(attn), w.o, linear_shape(P, C, C), 1.0f, 1.0f, s);
    rmsnorm_forward_cuda(ln, m.p_rstd.as<float>(), x, w.ln2, P, C, s);
    gemm(m.gemm, m.p_ab.as<Bf16>(), static_cast<const Bf16*>(ln), w.w13, linear_shape(P, C, 2 * F), 1.0f, 0.0f, s);
    swiglu_forward_cuda(m.p_h.as<Bf16>(), static_cast<const Bf16*>(m.p_ab.as<Bf16>()), P, F, s);
    gemm(m.gemm, x, static_cast<const Bf16*>(m.p_h.as<Bf16>()), w.w2, linear_shape(P, F, C), 1.0f, 1.0f, s);
  }
  // Only the last position's logits: they give the first new token.
  rmsnorm_forward_cuda(ln, m.p_rstd.as<float>(), x + (P - 1) * C, m.ln_final, 1, C, s);
  gemm(m.gemm, m.logits.as<float>() + static_cast<std::int64_t>(slot) * m.V, static_cast<const Bf16*>(ln), m.lm_head,
       linear_shape(1, C, m.V), 1.0f, 0.0f, s);
  record_sample(m, slot, 1, false, false);
}

void write_params(Impl& m, const SampleOptions& opt, std::int32_t stop_id, std::uint64_t seed) {
  if (opt.temperature < 0) fail("temperature must be >= 0 (0 = greedy), got ", opt.temperature);
  if (!(opt.top_p > 0 && opt.top_p <= 1)) fail("top_p must be in (0, 1], got ", opt.top_p);
  // The previous step may still read the params: wait for the stream before rewriting the staging.
  SLM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  *m.stage_params.as<SampleParams>() = SampleParams{.temperature = static_cast<float>(opt.temperature),
                                                    .top_p = static_cast<float>(opt.top_p),
                                                    .seed = seed,
                                                    .stop_id = stop_id,
                                                    .context_length = static_cast<std::int32_t>(
                                                        std::min<std::int64_t>(m.c.context_length, m.T))};
  SLM_CUDA_CHECK(cudaMemcpyAsync(m.params.data(), m.stage_params.ptr, sizeof(SampleParams), cudaMemcpyHostToDevice,
                                 m.stream));
}

StopReason stop_of(std::int32_t status) {
  switch (static_cast<SlotStatus>(status)) {
    case SlotStatus::end_of_text: return StopReason::end_of_text;
    case SlotStatus::context_length: return StopReason::context_length;
    default: return StopReason::max_new_tokens;
  }
}

}  // namespace

// ---- construction --------------------------------------------------------------------------------

GpuDecoder::GpuDecoder(const Model& model, const GpuDecoderOptions& o) : impl_(std::make_unique<Impl>()) {
  const ModelConfig& c = model.config;
  check_config(c, o);
  Impl& m = *impl_;
  m.c = c;
  m.o = o;
  m.B = static_cast<int>(o.max_batch);
  m.T = static_cast<int>(o.max_length > 0 ? o.max_length : c.context_length);
  m.C = static_cast<int>(c.d_model);
  m.H = static_cast<int>(c.num_heads);
  m.Hkv = m.H;   // grouped-query attention would give fewer kv heads
  m.D = static_cast<int>(c.d_head());
  m.F = static_cast<int>(c.d_ff);
  m.V = static_cast<int>(c.vocab_size);
  m.L = static_cast<int>(c.num_layers);
  const std::int64_t B = m.B, T = m.T, C = m.C, F = m.F, V = m.V, L = m.L, D = m.D, Hkv = m.Hkv;
  const std::int64_t Cqkv = (m.H + 2 * Hkv) * D;
  SLM_CUDA_CHECK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));

  // Weights: the fp32 arena goes to the device once; matrices are converted to bf16 there.
  const ParamLayout& layout = model.layout;
  GpuBuffer arena(layout.total * 4);
  SLM_CUDA_CHECK(cudaMemcpyAsync(arena.data(), model.params.data(), static_cast<std::size_t>(layout.total) * 4,
                                 cudaMemcpyHostToDevice, m.stream));
  const std::int64_t per_layer16 = Cqkv * C + C * C + 2 * F * C + C * F;
  m.w16 = GpuBuffer((L * per_layer16 + V * C) * 2);
  m.w32 = GpuBuffer((V * C + 2 * L * C + C) * 4);
  Bf16* w16 = m.w16.as<Bf16>();
  float* w32 = m.w32.as<float>();
  auto to_bf16 = [&](Bf16* dst, const std::string& name) {
    const ParamSpec& p = layout.find(name);
    convert_cuda(dst, arena.as<float>() + p.offset, p.numel(), m.stream);
    return dst + p.numel();
  };
  auto to_f32 = [&](float* dst, const std::string& name) {
    const ParamSpec& p = layout.find(name);
    SLM_CUDA_CHECK(cudaMemcpyAsync(dst, arena.as<float>() + p.offset, static_cast<std::size_t>(p.numel()) * 4,
                                   cudaMemcpyDeviceToDevice, m.stream));
    return dst + p.numel();
  };
  m.embedding = w32;
  w32 = to_f32(w32, "token_embeddings.weight");
  for (std::int64_t l = 0; l < L; ++l) {
    const std::string pre = "layers." + std::to_string(l) + ".";
    LayerWeights16 lw{};
    lw.qkv = w16;
    w16 = to_bf16(w16, pre + "attn.q_proj.weight");
    w16 = to_bf16(w16, pre + "attn.k_proj.weight");
    w16 = to_bf16(w16, pre + "attn.v_proj.weight");
    lw.o = w16;
    w16 = to_bf16(w16, pre + "attn.output_proj.weight");
    lw.w13 = w16;
    w16 = to_bf16(w16, pre + "ffn.w1.weight");
    w16 = to_bf16(w16, pre + "ffn.w3.weight");
    lw.w2 = w16;
    w16 = to_bf16(w16, pre + "ffn.w2.weight");
    lw.ln1 = w32;
    w32 = to_f32(w32, pre + "ln1.weight");
    lw.ln2 = w32;
    w32 = to_f32(w32, pre + "ln2.weight");
    m.layers.push_back(lw);
  }
  m.ln_final = w32;
  w32 = to_f32(w32, "ln_final.weight");
  m.lm_head = w16;
  w16 = to_bf16(w16, "lm_head.weight");
  SLM_CHECK(w16 == m.w16.as<Bf16>() + m.w16.bytes() / 2 && w32 == m.w32.as<float>() + m.w32.bytes() / 4);

  const RopeTable rope = make_rope_table(c.rope_theta, D, T);
  m.rope_cos = GpuBuffer(static_cast<std::int64_t>(rope.cos.size()) * 4);
  m.rope_sin = GpuBuffer(static_cast<std::int64_t>(rope.sin.size()) * 4);
  SLM_CUDA_CHECK(cudaMemcpyAsync(m.rope_cos.data(), rope.cos.data(), rope.cos.size() * 4, cudaMemcpyHostToDevice, m.stream));
  SLM_CUDA_CHECK(cudaMemcpyAsync(m.rope_sin.data(), rope.sin.data(), rope.sin.size() * 4, cudaMemcpyHostToDevice, m.stream));
  m.k_cache = GpuBuffer(L * B * Hkv * T * D * 2);
  m.v_cache = GpuBuffer(L * B * Hkv * T * D * 2);

  const std::int64_t tiles = (C + kDecodeTile - 1) / kDecodeTile;
  m.x = GpuBuffer(B * C * 4);
  m.ss = GpuBuffer(B * tiles * 4);
  m.q = GpuBuffer(B * C * 4);
  m.attn = GpuBuffer(B * C * 2);
  m.h = GpuBuffer(B * F * 2);
  m.logits = GpuBuffer(B * V * 4);
  m.attn_partials = GpuBuffer(B * m.H * decode_attention_splits(m.T, m.window) * (D + 2) * 4);
  m.attn_counters = GpuBuffer(B * m.H * 4);
  if (o.gemm == DecoderGemm::cublas) {
    m.ln = GpuBuffer(B * C * 2);
    m.rstd = GpuBuffer(B * 4);
    m.qkv = GpuBuffer(B * Cqkv * 2);
    m.ab = GpuBuffer(B * 2 * F * 2);
  }
  m.p_ids = GpuBuffer(T * 4);
  m.p_x = GpuBuffer(T * C * 4);
  m.p_ln = GpuBuffer(T * C * 2);
  m.p_rstd = GpuBuffer(T * 4);
  m.p_qkv = GpuBuffer(T * Cqkv * 2);
  m.p_attn = GpuBuffer(T * C * 2);
  m.p_lse = GpuBuffer(m.H * T * 4);
  m.p_ab = GpuBuffer(T * 2 * F * 2);
  m.p_h = GpuBuffer(T * F * 2);
  m.slots = GpuBuffer(B * static_cast<std::int64_t>(sizeof(SlotState)));
  m.params = GpuBuffer(sizeof(SampleParams));
  m.records = HostBuffer(kRing * B * static_cast<std::int64_t>(sizeof(SlotRecord)), true);
  m.stage_ids = HostBuffer(B * T * 4, false);
  m.stage_slots = HostBuffer(B * static_cast<std::int64_t>(sizeof(SlotState)), false);
  m.stage_params = HostBuffer(sizeof(SampleParams), false);
  m.consumed.assign(static_cast<std::size_t>(B), 0);

  for (GpuBuffer* b : {&m.x, &m.ss, &m.q, &m.attn, &m.h, &m.logits, &m.attn_counters, &m.k_cache, &m.v_cache})
    SLM_CUDA_CHECK(cudaMemsetAsync(b->data(), 0, static_cast<std::size_t>(b->bytes()), m.stream));
  for (std::int64_t b = 0; b < B; ++b)
    m.stage_slots.as<SlotState>()[b] = SlotState{.status = static_cast<std::int32_t>(SlotStatus::empty),
                                                 .length = 0, .generated = 0, .max_new = 0, .events = 0, .sequence = 0};
  SLM_CUDA_CHECK(cudaMemcpyAsync(m.slots.data(), m.stage_slots.ptr, static_cast<std::size_t>(m.slots.bytes()),
                                 cudaMemcpyHostToDevice, m.stream));
  write_params(m, {.temperature = 0.0, .top_p = 1.0}, -1, 0);

  // One eager step with every slot empty (cuBLASLt picks its algorithms outside the capture, and a
  // launch error shows here), then the capture.
  record_step(m, o.pdl);
  SLM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  cudaGraph_t g = nullptr;
  SLM_CUDA_CHECK(cudaStreamBeginCapture(m.stream, cudaStreamCaptureModeThreadLocal));
  record_step(m, o.pdl);
  SLM_CUDA_CHECK(cudaStreamEndCapture(m.stream, &g));
  const cudaError_t inst = cudaGraphInstantiate(&m.graph, g, 0);
  cudaGraphDestroy(g);
  SLM_CUDA_CHECK(inst);
  SLM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

GpuDecoder::~GpuDecoder() {
  if (!impl_) return;
  if (impl_->stream) cudaStreamSynchronize(impl_->stream);
  if (impl_->graph) cudaGraphExecDestroy(impl_->graph);
  if (impl_->stream) cudaStreamDestroy(impl_->stream);
}

// ---- the synchronous pieces ----------------------------------------------------------------------

std::int64_t GpuDecoder::max_batch() const { return impl_->B; }
std::int64_t GpuDecoder::max_length() const { return impl_->T; }
const DecodeTimes& GpuDecoder::times() const { return impl_->times; }

void GpuDecoder::set_sampling(const SampleOptions& opt, std::int32_t stop_id, std::uint64_t seed) {
  write_params(*impl_, opt, stop_id, seed);
  SLM_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
}

namespace {
void check_prompt_fits(const Impl& m, std::int64_t P, const std::string& what) {
  if (P == 0) fail(what, " is empty");
  if (P > m.c.context_length) fail(what, " is ", P, " tokens, longer than the context length ", m.c.context_length);
  if (P > m.T) fail(what, " is ", P, " tokens, longer than the decoder's cache of ", m.T, " positions");
}
}  // namespace

void GpuDecoder::start(std::int64_t slot, const std::vector<std::int32_t>& prompt, std::int64_t max_new_tokens,
                       std::int64_t sequence) {
  Impl& m = *impl_;
  SLM_CHECK(slot >= 0 && slot < m.B, "slot ", slot, " outside the decoder's ", m.B);
  check_prompt_fits(m, static_cast<std::int64_t>(prompt.size()), "the prompt");
  for (std::int32_t id : prompt)
    if (id < 0 || id >= m.V) fail("prompt token ", id, " is outside the vocabulary of ", m.V);
  if (max_new_tokens < 0) fail("max_new_tokens must be >= 0");
  SLM_CUDA_CHECK(cudaStreamSynchronize(m.stream));   // the slot's staging may still be read
  enqueue_prefill(m, static_cast<int>(slot), prompt, max_new_tokens, sequence);
  SLM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

void GpuDecoder::step() {
  SLM_CUDA_CHECK(cudaGraphLaunch(impl_->graph, impl_->stream));
  SLM_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
}

std::vector<GpuDecoder::SlotEvent> GpuDecoder::events(std::int64_t slot) {
  Impl& m = *impl_;
  SLM_CHECK(slot >= 0 && slot < m.B);
  SLM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  SlotState st{};
  SLM_CUDA_CHECK(cudaMemcpy(&st, m.slot_states() + slot, sizeof st, cudaMemcpyDeviceToHost));
  SLM_CHECK(st.events - m.consumed[slot] <= kRing, "more steps than the record ring holds between reads");
  std::vector<SlotEvent> out;
  for (; m.consumed[slot] < st.events; ++m.consumed[slot]) {
    const SlotRecord& r = m.record(slot, m.consumed[slot]);
    out.push_back({.token = r.token, .live = r.status == static_cast<int>(SlotStatus::live), .stop = stop_of(r.status)});
  }
  return out;
}

std::vector<float> GpuDecoder::logits(std::int64_t slot) {
  Impl& m = *impl_;
  SLM_CHECK(slot >= 0 && slot < m.B);
  SLM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  std::vector<float> out(static_cast<std::size_t>(m.V));
  SLM_CUDA_CHECK(cudaMemcpy(out.data(), m.logits.as<float>() + slot * m.V, out.size() * 4, cudaMemcpyDeviceToHost));
  return out;
}

// ---- generate --------------------------------------------------------------------------------------

std::vector<GenerateResult> GpuDecoder::generate(const std::vector<std::vector<std::int32_t>>& prompts,
                                                 std::int64_t max_new_tokens, const SampleOptions& opt,
                                                 std::int32_t stop_id, std::uint64_t seed,
                                                 const std::function<void(std::int64_t, std::int32_t)>& on_token) {
  Impl& m = *impl_;
  const double wall0 = now_seconds();
  const auto n = static_cast<std::int64_t>(prompts.size());
  for (std::int64_t i = 0; i < n; ++i) {
    check_prompt_fits(m, static_cast<std::int64_t>(prompts[i].size()), str("prompt ", i + 1));
    for (std::int32_t id : prompts[i])
      if (id < 0 || id >= m.V) fail("prompt ", i + 1, ": token ", id, " is outside the vocabulary of ", m.V);
  }
  if (max_new_tokens < 0) fail("max_new_tokens must be >= 0");
  if (n > std::numeric_limits<std::int32_t>::max()) fail("too many prompts");
  write_params(m, opt, stop_id, seed);
  m.times = {};
  std::vector<GenerateResult> results(static_cast<std::size_t>(n));
  const std::int64_t context = std::min<std::int64_t>(m.c.context_length, m.T);

  // Queued work, in stream order: a prefill of one slot, or a step of all. Each item ends with an
  // event; its time is from the previous item's event to its own.
  struct Item {
    bool prefill;
    int slot;
    std::unique_ptr<Event> done;
  };
  std::deque<Item> queue;
  std::vector<std::unique_ptr<Event>> spare;
  auto take_event = [&] {
    if (spare.empty()) return std::make_unique<Event>();
    auto e = std::move(spare.back());
    spare.pop_back();
    return e;
  };
  Event start;
  SLM_CUDA_CHECK(cudaEventRecord(start.e, m.stream));
  cudaEvent_t last_event = start.e;
  std::unique_ptr<Event> last_owner;   // keeps last_event alive once its item is done

  // The host's view of each slot, as of the items processed so far.
  std::vector<std::int64_t> prompt_of(static_cast<std::size_t>(m.B), -1);
  std::vector<char> live(static_cast<std::size_t>(m.B), 0);
  std::vector<std::int64_t> remaining(static_cast<std::size_t>(m.B), 0);   // steps it may still run
  // A queued prefill's slot: the steps it may need after it, and the steps queued before it.
  std::vector<char> pending(static_cast<std::size_t>(m.B), 0);
  std::vector<std::int64_t> potential(static_cast<std::size_t>(m.B), 0), steps_before(static_cast<std::size_t>(m.B), 0);
  std::int64_t next_prompt = 0, steps_queued = 0, steps_enqueued = 0;

  auto enqueue = [&](bool prefill, int slot) {
    if (prefill) {
      const std::int64_t i = next_prompt++;
      prompt_of[slot] = i;
      enqueue_prefill(m, slot, prompts[i], max_new_tokens, i);
      const auto P = static_cast<std::int64_t>(prompts[i].size());
      m.times.prompt_tokens += P;
      pending[slot] = 1;
      potential[slot] = std::min(max_new_tokens - 1, context - P);
      steps_before[slot] = steps_enqueued;
    } else {
      SLM_CUDA_CHECK(cudaGraphLaunch(m.graph, m.stream));
      steps_queued += 1;
      steps_enqueued += 1;
    }
    Item item{prefill, slot, take_event()};
    SLM_CUDA_CHECK(cudaEventRecord(item.done->e, m.stream));
    queue.push_back(std::move(item));
  };
  auto read_record = [&](int slot, bool from_prefill) {
    const SlotRecord r = m.record(slot, m.consumed[slot]);
    m.consumed[slot] += 1;
    GenerateResult& res = results[static_cast<std::size_t>(prompt_of[slot])];
    if (r.token >= 0) {
      res.tokens.push_back(r.token);
      m.times.generated_tokens += 1;
      if (!from_prefill) m.times.decode_tokens += 1;
      if (on_token) on_token(prompt_of[slot], r.token);
    }
    if (r.status == static_cast<int>(SlotStatus::live)) {
      live[slot] = 1;
      remaining[slot] = std::min<std::int64_t>(max_new_tokens - r.generated, context - r.length);
      return;
    }
    res.stop = stop_of(r.status);
    live[slot] = 0;
    prompt_of[slot] = -1;
    if (next_prompt < n) enqueue(true, slot);   // the freed slot takes the next prompt
  };

  for (int b = 0; b < m.B && next_prompt < n; ++b) enqueue(true, b);
  for (;;) {
    // Keep up to in_flight steps queued while some sequence may still need them.
    for (;;) {
      std::int64_t need = 0;
      for (int b = 0; b < m.B; ++b) {
        if (live[b]) need = std::max(need, remaining[b] - steps_queued);
        if (pending[b]) need = std::max(need, potential[b] - (steps_enqueued - steps_before[b]));
      }
      if (need <= 0 || steps_queued >= m.o.in_flight) break;
      enqueue(false, -1);
    }
    if (queue.empty()) break;
    Item item = std::move(queue.front());
    queue.pop_front();
    SLM_CUDA_CHECK(cudaEventSynchronize(item.done->e));
    float ms = 0;
    SLM_CUDA_CHECK(cudaEventElapsedTime(&ms, last_event, item.done->e));
    (item.prefill ? m.times.prefill_s : m.times.decode_s) += ms / 1e3;
    last_event = item.done->e;
    if (last_owner) spare.push_back(std::move(last_owner));
    if (item.prefill) {
      pending[item.slot] = 0;
      read_record(item.slot, true);
    } else {
      steps_queued -= 1;
      m.times.steps += 1;
      for (int b = 0; b < m.B; ++b)
        if (live[b]) read_record(b, false);
    }
    last_owner = std::move(item.done);
  }
  m.times.total_s = now_seconds() - wall0;
  return results;
}

// ---- descriptions and measurements -------------------------------------------------------------------

std::int64_t GpuDecoder::step_weight_bytes() const {
  const Impl& m = *impl_;
  const std::int64_t C = m.C, F = m.F, Cqkv = static_cast<std::int64_t>(m.H + 2 * m.Hkv) * m.D;
  return 2 * (m.L * (Cqkv * C + C * C + 2 * F * C + C * F) + static_cast<std::int64_t>(m.V) * C);
}

std::int64_t GpuDecoder::step_cache_bytes(std::int64_t batch, std::int64_t length) const {
  const Impl& m = *impl_;
  return 2 * 2 * m.L * batch * m.Hkv * length * m.D;   // keys and values, bf16
}

namespace {
double buffer_bytes(std::initializer_list<const GpuBuffer*> buffers) {
  double sum = 0;
  for (const GpuBuffer* b : buffers) sum += static_cast<double>(b->bytes());
  return sum;
}
}  // namespace

std::string GpuDecoder::describe() const {
  const Impl& m = *impl_;
  return str("GPU decoder: bf16, batch ", m.B, " x ", m.T, " positions, step with ", decoder_gemm_name(m.o.gemm),
             m.o.gemm == DecoderGemm::own && m.o.pdl ? " (programmatic dependent launch)" : "", ", CUDA graph, ",
             m.o.in_flight, " steps queued ahead\nmemory (GPU): weights bf16 ", human_bytes(static_cast<double>(m.w16.bytes())),
             " + fp32 embedding and gains ", human_bytes(static_cast<double>(m.w32.bytes())), ", KV cache ",
             human_bytes(static_cast<double>(m.k_cache.bytes() + m.v_cache.bytes())), ", step buffers ",
             human_bytes(buffer_bytes({&m.x, &m.ss, &m.q, &m.attn, &m.h, &m.logits, &m.attn_partials, &m.attn_counters,
                                       &m.ln, &m.rstd, &m.qkv, &m.ab, &m.rope_cos, &m.rope_sin})),
             ", prefill buffers ",
             human_bytes(buffer_bytes({&m.p_ids, &m.p_x, &m.p_ln, &m.p_rstd, &m.p_qkv, &m.p_attn, &m.p_lse, &m.p_ab, &m.p_h})),
             ", plus cuBLASLt's 32 MiB workspace");
}

std::string GpuDecoder::profile_step() {
  Impl& m = *impl_;
  std::vector<std::pair<const char*, cudaEvent_t>> marks;
  SLM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  m.profile = &marks;
  mark(m, "start");
  record_step(m, false);
  m.profile = nullptr;
  SLM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  std::vector<std::pair<std::string, std::pair<double, int>>> parts;   // name → (ms, launches)
  double total = 0;
  for (std::size_t i = 1; i < marks.size(); ++i) {
    float ms = 0;
    SLM_CUDA_CHECK(cudaEventElapsedTime(&ms, marks[i - 1].second, marks[i].second));
    total += ms;
    auto it = std::find_if(parts.begin(), parts.end(), [&](const auto& p) { return p.first == marks[i].first; });
    if (it == parts.end()) parts.push_back({marks[i].first, {ms, 1}});
    else it->second.first += ms, it->second.second += 1;
  }
  for (auto& [name, e] : marks) cudaEventDestroy(e);
  std::string out = str("profile of one eager decode step (", m.B, " sequences, events between kernels): ", total * 1e3,
                        " us\n");
  for (const auto& [name, t] : parts) {
    char line[160];
    std::snprintf(line, sizeof line, "  %-34s %3d x %7.2f us = %8.1f us  %5.1f%%\n", name.c_str(), t.second,
                  t.first * 1e3 / t.second, t.first * 1e3, 100.0 * t.first / total);
    out += line;
  }
  return out;
}

double gpu_copy_bandwidth(std::int64_t bytes) {
  GpuBuffer a(bytes), b(bytes);
  cudaStream_t s = nullptr;
  SLM_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  SLM_CUDA_CHECK(cudaMemsetAsync(a.data(), 1, static_cast<std::size_t>(bytes), s));
  Event e0, e1;
  constexpr int kReps = 10;
  SLM_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), static_cast<std::size_t>(bytes), cudaMemcpyDeviceToDevice, s));
  SLM_CUDA_CHECK(cudaEventRecord(e0.e, s));
  for (int i = 0; i < kReps; ++i)
    SLM_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), static_cast<std::size_t>(bytes), cudaMemcpyDeviceToDevice, s));
  SLM_CUDA_CHECK(cudaEventRecord(e1.e, s));
  SLM_CUDA_CHECK(cudaEventSynchronize(e1.e));
  float ms = 0;
  SLM_CUDA_CHECK(cudaEventElapsedTime(&ms, e0.e, e1.e));
  SLM_CUDA_CHECK(cudaStreamDestroy(s));
  return 2.0 * static_cast<double>(bytes) * kReps / (ms / 1e3);
}

}  // namespace scratchlm
