// Generation on the GPU with a KV cache (docs/gpu.md, "Generation"): a decoder that holds bf16
// weights and the keys and values of up to max_batch sequences of up to max_length positions in
// device memory.
//   - prefill: a prompt entering a slot runs through the model once (cuBLASLt products, flash
//     attention on tensor cores), writing its keys and values into the slot's cache; its last
//     position's logits give its first token;
//   - decode: one step feeds every live slot's latest token at its own position; the step's
//     kernels (generate/cuda/decode_kernels.h: fused skinny products, split attention over the
//     cache, sampling on the device) are captured once as a CUDA graph and replayed, reading the
//     slots' positions and states from device memory, so the graph never changes;
//   - each sequence stops on its own (<|endoftext|>, max new tokens, or the context), as the
//     CPU's generate() does, and its slot takes the next prompt (continuous batching);
//   - the host queues a few steps ahead and reads each step's tokens from a ring in mapped host
//     memory, so there is no round trip per token, and the text still streams.
// Greedy decoding is the CPU's rule (argmax, lowest id on ties); sampling draws from the CPU's
// distribution (temperature, top-p with ties by id) with a counter-based generator of (seed, prompt
// index, token index), not the host Rng's draws: a prompt's text depends only on the seed and its
// index, never on the batch it shared. bf16 only (fp32 generation on the GPU is generate_gpu's
// full recompute, generate.h); the CS336 architecture only, like GpuModel.
// The header holds no CUDA types; the implementation is generate/cuda/gpu_decoder.cu.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "generate/generate.h"
#include "model/model.h"

namespace scratchlm {

// How the step's linear layers run: our skinny-GEMM kernels with their fused prologues and
// epilogues (at most 32 sequences), or cuBLASLt with separate norm, RoPE/cache, SwiGLU kernels.
enum class DecoderGemm { own, cublas };
const char* decoder_gemm_name(DecoderGemm g);

struct GpuDecoderOptions {
  std::int64_t max_batch = 1;    // B: sequences decoded together (own kernels: at most 32)
  std::int64_t max_length = 0;   // positions per sequence in the cache; 0 = the model's context_length
  DecoderGemm gemm = DecoderGemm::own;
  bool pdl = false;              // own kernels: programmatic dependent launch between the step's kernels
  std::int64_t in_flight = 8;    // decode steps the host queues ahead of the tokens it has read (1: wait for each)
};

// The fastest settings measured for `batch` sequences of a model of width d_model (BENCHMARKS.md,
// "GPU generation", batches 1 to 32 on an H100): our kernels with programmatic dependent launch
// (where the device has it, compute capability 9.0 and up) for small batches, cuBLASLt for larger
// ones. Where cuBLASLt starts to win depends on the width: from batch 16 at d_model 512 (ts-17M),
// from batch 4 at 768 (gpt2s-124M; wider layers give cuBLASLt's tiles more to do).
inline std::int64_t own_kernels_up_to(std::int64_t d_model) { return d_model <= 512 ? 8 : 2; }
GpuDecoderOptions fastest_decoder_options(std::int64_t batch, std::int64_t d_model);

// Of the last generate(): GPU time of the prefills and of the decode steps (each the time between
// the events that end it and the previous item), wall time of the whole call, and token counts.
struct DecodeTimes {
  double prefill_s = 0, decode_s = 0, total_s = 0;
  std::int64_t prompt_tokens = 0;     // tokens prefilled
  std::int64_t decode_tokens = 0;     // tokens emitted by decode steps
  std::int64_t generated_tokens = 0;  // all new tokens (the first of each prompt comes from its prefill)
  std::int64_t steps = 0;             // decode steps run
};

class GpuDecoder {
 public:
  // Copies the model's weights (bf16 matrices, fp32 embedding and norm gains) and allocates the
  // cache; captures the step graph. Throws Error for what the decoder cannot run.
  GpuDecoder(const Model& model, const GpuDecoderOptions& o);
  ~GpuDecoder();
  GpuDecoder(const GpuDecoder&) = delete;
  GpuDecoder& operator=(const GpuDecoder&) = delete;

  // Continues every prompt (non-empty, at most context_length and max_length tokens), max_batch at a
  // time, each until stop_id (−1: none), max_new_tokens or the context. on_token(prompt index,
  // token) sees tokens as they arrive (in order within a prompt). Results in prompt order.
  std::vector<GenerateResult> generate(const std::vector<std::vector<std::int32_t>>& prompts,
                                       std::int64_t max_new_tokens, const SampleOptions& opt, std::int32_t stop_id,
                                       std::uint64_t seed,
                                       const std::function<void(std::int64_t, std::int32_t)>& on_token = {});
  const DecodeTimes& times() const;

  // The pieces generate() is made of, synchronous, for tests and benchmarks. A slot's events are
  // what the device reported for it since the last call: one per prefill or step while live.
  struct SlotEvent {
    std::int32_t token = -1;   // emitted, or −1
    bool live = true;          // false: the sequence stopped here, for `stop`
    StopReason stop = StopReason::max_new_tokens;
  };
  void set_sampling(const SampleOptions& opt, std::int32_t stop_id, std::uint64_t seed);
  void start(std::int64_t slot, const std::vector<std::int32_t>& prompt, std::int64_t max_new_tokens,
             std::int64_t sequence);
  void step();
  std::vector<SlotEvent> events(std::int64_t slot);
  // The logits (V floats) the slot's latest token was drawn from.
  std::vector<float> logits(std::int64_t slot);

  std::int64_t max_batch() const;
  std::int64_t max_length() const;
  // Bytes of weights one decode step reads (every matrix once, bf16) and of the KV cache it reads at
  // `length` positions per sequence for `batch` sequences: the memory floor of a step.
  std::int64_t step_weight_bytes() const;
  std::int64_t step_cache_bytes(std::int64_t batch, std::int64_t length) const;
  std::string describe() const;       // the settings and the memory plan, one line each
  // One step run eagerly (PDL off) with an event after each kernel: the time of each kind of
  // kernel, summed over layers. It is a real step: the slots advance.
  std::string profile_step();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Device-to-device copy bandwidth in bytes/s (bytes read plus bytes written, per second) of
// cudaMemcpy over `bytes`-sized buffers: the memory speed the step's floor is measured against.
double gpu_copy_bandwidth(std::int64_t bytes);

}  // namespace scratchlm
