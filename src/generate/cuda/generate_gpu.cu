// Generation on the GPU, simple decoding: the model runs over the whole sequence so far for each new
// token (a GpuModel with forward buffers for one sequence of the context length); sampling on the host.
#include "generate/generate.h"
#include "model/gpu_model.h"

namespace scratchlm {

void check_prompt(const ModelConfig& c, std::int64_t P);

GenerateResult generate_gpu(const Model& model, bool bf16, const std::vector<std::int32_t>& prompt,
                            std::int64_t max_new_tokens, const SampleOptions& opt, std::int32_t stop_id, Rng& rng,
                            const std::function<void(std::int32_t)>& on_token) {
  const ModelConfig& c = model.config;
  check_prompt(c, static_cast<std::int64_t>(prompt.size()));
  GpuModel gpu(c, {.precision = bf16 ? GpuPrecision::bf16 : GpuPrecision::fp32, .batch = 1, .grad_accum = 1,
                   .with_backward = false});
  gpu.set_params(model.params.data());
  std::vector<std::int32_t> tokens = prompt;
  std::vector<float> logits(static_cast<std::size_t>(c.vocab_size));
  gpu.last_logits(tokens.data(), static_cast<std::int64_t>(tokens.size()), logits.data());
  return sample_loop(logits.data(), c, static_cast<std::int64_t>(tokens.size()), max_new_tokens, opt, stop_id, rng,
                     on_token, [&](std::int32_t next) {
                       tokens.push_back(next);
                       gpu.last_logits(tokens.data(), static_cast<std::int64_t>(tokens.size()), logits.data());
                       return static_cast<const float*>(logits.data());
                     });
}

}  // namespace scratchlm
