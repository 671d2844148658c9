#include "generate/generate.h"

#include <algorithm>
#include <cmath>

#include "util/error.h"

namespace scratchlm {

std::int32_t sample_token(const float* logits, std::int64_t V, const SampleOptions& opt, Rng& rng,
                          std::vector<std::pair<float, std::int32_t>>& scratch) {
  if (opt.temperature <= 0.0) {
    std::int64_t best = 0;
    for (std::int64_t v = 1; v < V; ++v)
      if (logits[v] > logits[best]) best = v;
    return static_cast<std::int32_t>(best);
  }
  // softmax(logits / temperature), stable
  float max = logits[0];
  for (std::int64_t v = 1; v < V; ++v) max = std::max(max, logits[v]);
  scratch.resize(static_cast<std::size_t>(V));
  double sum = 0;
  for (std::int64_t v = 0; v < V; ++v) {
    const float p = std::exp(static_cast<float>((logits[v] - max) / opt.temperature));
    scratch[v] = {p, static_cast<std::int32_t>(v)};
    sum += p;
  }
  // nucleus: most likely first (ties by id, so the order is deterministic), cut where the mass
  // reaches top_p (the token that crosses it is kept)
  std::int64_t keep = V;
  double kept_mass = sum;
  if (opt.top_p < 1.0) {
    std::sort(scratch.begin(), scratch.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    double cumulative = 0;
    for (std::int64_t i = 0; i < V; ++i) {
      cumulative += scratch[i].first;
      if (cumulative >= opt.top_p * sum) {
        keep = i + 1;
        break;
      }
    }
    kept_mass = 0;
    for (std::int64_t i = 0; i < keep; ++i) kept_mass += scratch[i].first;
  }
  double r = rng.uniform() * kept_mass;
  for (std::int64_t i = 0; i < keep; ++i) {
    r -= scratch[i].first;
    if (r < 0) return scratch[i].second;
  }
  return scratch[keep - 1].second;   // rounding left r just above zero
}

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::end_of_text: return "end of text";
    case StopReason::max_new_tokens: return "max new tokens";
    case StopReason::context_length: return "context length";
  }
  return "?";
}

GenerateResult sample_loop(const float* logits, const ModelConfig& c, std::int64_t length, std::int64_t max_new_tokens,
                           const SampleOptions& opt, std::int32_t stop_id, Rng& rng,
                           const std::function<void(std::int32_t)>& on_token,
                           const std::function<const float*(std::int32_t)>& advance) {
  std::vector<std::pair<float, std::int32_t>> scratch;
  GenerateResult result;
  for (;;) {
    if (static_cast<std::int64_t>(result.tokens.size()) >= max_new_tokens) {
      result.stop = StopReason::max_new_tokens;
      break;
    }
    std::int32_t next = sample_token(logits, c.vocab_size, opt, rng, scratch);
    if (next == stop_id) {
      result.stop = StopReason::end_of_text;
      break;
    }
    result.tokens.push_back(next);
    if (on_token) on_token(next);
    if (length >= c.context_length) {   // no position left to read the new token at
      result.stop = StopReason::context_length;
      break;
    }
    logits = advance(next);
    length += 1;
  }
  return result;
}

void check_prompt(const ModelConfig& c, std::int64_t P) {
  if (P == 0) fail("generate: the prompt is empty");
  if (P > c.context_length) fail("generate: the prompt is ", P, " tokens, longer than the context length ", c.context_length);
}

GenerateResult generate(Model& model, const std::vector<std::int32_t>& prompt, std::int64_t max_new_tokens,
                        const SampleOptions& opt, std::int32_t stop_id, Rng& rng,
                        const std::function<void(std::int32_t)>& on_token) {
  const ModelConfig& c = model.config;
  const auto P = static_cast<std::int64_t>(prompt.size());
  check_prompt(c, P);
  KvCache cache(c, c.context_length);
  // prefill: the whole prompt in one pass; then one position per step
  Activations prefill(c, 1, P, Activations::WithBackward::no);
  model_forward(prefill, model, prompt.data(), 1, P, &cache);
  Activations step(c, 1, 1, Activations::WithBackward::no);
  return sample_loop(prefill.logits.data(), c, P, max_new_tokens, opt, stop_id, rng, on_token, [&](std::int32_t next) {
    model_forward(step, model, &next, 1, 1, &cache);
    return static_cast<const float*>(step.logits.data());
  });
}

}  // namespace scratchlm
