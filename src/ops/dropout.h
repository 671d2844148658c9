// Dropout (Srivastava et al. 2014), inverted: a kept value is scaled by 1 / (1 − p), a dropped one
// is 0, so the expectation is unchanged and evaluation needs no rescaling. Used only in training.
//
// The masks come from a counter-based hash, not from a stored mask or a stateful generator: whether
// element `index` of dropout site `site` is kept under `seed` is a pure function of the three
// 64-bit words. Backward regenerates forward's mask instead of reading one (the (B, H, T, T)
// attention mask is never stored), and the GPU path can reproduce the CPU's masks bit for bit:
// under nvcc these functions are __host__ __device__.
//
// The hash, exactly (all arithmetic mod 2^64):
//   step(z)  = splitmix64's output for state z:  z += 0x9e3779b97f4a7c15;
//              z = (z ^ (z >> 30)) · 0xbf58476d1ce4e5b9;  z = (z ^ (z >> 27)) · 0x94d049bb133111eb;
//              return z ^ (z >> 31)
//   hash(seed, site, index) = step(step(step(seed) ^ site) ^ index)
//   keep  ⇔  hash(seed, site, index) ≥ threshold,  threshold = ⌊p · 2^64⌋   (dropout_threshold)
// so P(keep) = 1 − threshold / 2^64 = 1 − p to within 2^-64.
//
// Sites and indices used by the model (model.cpp), with N = B·T rows of a micro-batch:
//   site 0         the embedding output (token + position), index n·C + c of its (N, C)
//   site 1 + 3·l   layer l's attention output, before the residual add: index n·C + c
//   site 2 + 3·l   layer l's feed-forward output, before the residual add: index n·C + c
//   site 3 + 3·l   layer l's attention probabilities: index ((b·H + h)·Tq + i)·Tk + j
//                  (query i, key j, h the query head)
// The seed of a training micro-batch is dropout_seed(run seed, step, micro-batch), so a run
// resumed from a checkpoint draws the same masks as one that never stopped.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define SLM_HOST_DEVICE __host__ __device__
#else
#define SLM_HOST_DEVICE
#endif

namespace scratchlm {

SLM_HOST_DEVICE inline std::uint64_t splitmix64_step(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

SLM_HOST_DEVICE inline std::uint64_t dropout_hash(std::uint64_t seed, std::uint64_t site, std::uint64_t index) {
  return splitmix64_step(splitmix64_step(splitmix64_step(seed) ^ site) ^ index);
}

// ⌊p · 2^64⌋ for p in [0, 1): ldexp is exact, the conversion truncates, and the largest double
// below 1 gives 2^64 − 2^11, so it never overflows.
inline std::uint64_t dropout_threshold(double p) {
  return p <= 0 ? 0 : static_cast<std::uint64_t>(std::ldexp(p, 64));
}

SLM_HOST_DEVICE inline bool dropout_keep(std::uint64_t seed, std::uint64_t site, std::uint64_t index,
                                         std::uint64_t threshold) {
  return dropout_hash(seed, site, index) >= threshold;
}

// The dropout sites of the model (see the table above).
constexpr std::uint64_t kDropoutSiteEmbedding = 0;
SLM_HOST_DEVICE constexpr std::uint64_t dropout_site_attn_out(std::int64_t layer) { return 1 + 3 * static_cast<std::uint64_t>(layer); }
SLM_HOST_DEVICE constexpr std::uint64_t dropout_site_ffn_out(std::int64_t layer) { return 2 + 3 * static_cast<std::uint64_t>(layer); }
SLM_HOST_DEVICE constexpr std::uint64_t dropout_site_attn_probs(std::int64_t layer) { return 3 + 3 * static_cast<std::uint64_t>(layer); }

// The seed of one training micro-batch: a pure function of the run's seed, the optimizer step
// (0-based) and the micro-batch within it. The constant keeps it apart from the seeds of the
// initialisation and data streams.
inline std::uint64_t dropout_seed(std::uint64_t run_seed, std::int64_t step, std::int64_t micro) {
  return dropout_hash(run_seed ^ 0xd50b'0a7e'd50b'0a7eull, static_cast<std::uint64_t>(step),
                      static_cast<std::uint64_t>(micro));
}

// One dropout site's settings: p = 0 is off.
struct Dropout {
  double p = 0.0;
  std::uint64_t seed = 0;
  std::uint64_t site = 0;
  bool on() const { return p > 0; }
  std::uint64_t threshold() const { return dropout_threshold(p); }
  float scale() const { return static_cast<float>(1.0 / (1.0 - p)); }   // 1 / (1 − p) for the kept
};

// out (n) = x (n) ⊙ mask / (1 − p), the mask of d at indices 0 .. n−1; out may alias x. Backward
// is the same map applied to the gradient (dropout is linear in x): dx = dropout_forward(dout).
void dropout_forward(float* out, const float* x, std::int64_t n, const Dropout& d);

}  // namespace scratchlm
