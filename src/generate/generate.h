// Text generation. On the CPU: the prompt is run once through the model, filling a KV cache; then
// each new token costs one forward step of one position against the cache (no recomputation of
// the prefix). Sampling: temperature 0 is greedy (argmax, lowest id on ties); otherwise softmax of
// logits / temperature, cut to the smallest set of most likely tokens whose probability reaches
// top_p (nucleus sampling, Holtzman et al. 2020), renormalised, and drawn.
// On the GPU (generate_gpu): simple decoding, each new token runs the model over the whole sequence
// so far (no KV cache yet); the same sampling on the host.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/model.h"
#include "util/rng.h"

namespace scratchlm {

struct SampleOptions {
  double temperature = 1.0;   // 0 = greedy
  double top_p = 1.0;         // (0, 1]
};

// Draws a token from logits (V). `scratch` is reused between calls.
std::int32_t sample_token(const float* logits, std::int64_t V, const SampleOptions& opt, Rng& rng,
                          std::vector<std::pair<float, std::int32_t>>& scratch);

enum class StopReason { end_of_text, max_new_tokens, context_length };
const char* stop_reason_name(StopReason r);

struct GenerateResult {
  std::vector<std::int32_t> tokens;   // the new tokens (the stop token not included)
  StopReason stop = StopReason::max_new_tokens;
};

// Generates after `prompt` (non-empty, at most context_length tokens). Stops at `stop_id` (−1: none),
// after max_new_tokens, or when the context is full. on_token (may be empty) sees each new token.
GenerateResult generate(Model& model, const std::vector<std::int32_t>& prompt, std::int64_t max_new_tokens,
                        const SampleOptions& opt, std::int32_t stop_id, Rng& rng,
                        const std::function<void(std::int32_t)>& on_token = {});

// The same on the GPU (precision bf16 or fp32 as for training). Throws Error in a build without CUDA.
GenerateResult generate_gpu(const Model& model, bool bf16, const std::vector<std::int32_t>& prompt,
                            std::int64_t max_new_tokens, const SampleOptions& opt, std::int32_t stop_id, Rng& rng,
                            const std::function<void(std::int32_t)>& on_token = {});

// The loop both devices share: sample from `logits` (V), stop or emit the token, then `advance`
// with it for the next logits. `length` is the prompt's length; the context bounds it.
GenerateResult sample_loop(const float* logits, const ModelConfig& c, std::int64_t length, std::int64_t max_new_tokens,
                           const SampleOptions& opt, std::int32_t stop_id, Rng& rng,
                           const std::function<void(std::int32_t)>& on_token,
                           const std::function<const float*(std::int32_t)>& advance);

}  // namespace scratchlm
