// The one random number generator of the training system: xoshiro256** (Blackman & Vigna),
// seeded through splitmix64. Its whole state is four 64-bit words, so checkpoints store it exactly
// and a resumed run draws the same batches. Not cryptographic.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

namespace scratchlm {

class Rng {
 public:
  using State = std::array<std::uint64_t, 4>;

  explicit Rng(std::uint64_t seed = 0) {
    for (auto& word : s_) {   // splitmix64: spreads any seed (even 0) over the whole state
      seed += 0x9e3779b97f4a7c15ull;
      std::uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      word = z ^ (z >> 31);
    }
  }

  std::uint64_t next() {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }

  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

  // Uniform integer in [0, n), unbiased (rejection of the short last interval).
  std::uint64_t below(std::uint64_t n) {
    const std::uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    std::uint64_t x;
    do x = next();
    while (x >= limit);
    return x % n;
  }

  // Standard normal (Box–Muller; one draw per call keeps the state simple).
  double normal() {
    const double u1 = 1.0 - uniform();   // (0, 1]: log is finite
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

  // Normal(0, std²) conditioned on [-bound, bound] (rejection), as torch.nn.init.trunc_normal_.
  double truncated_normal(double std, double bound) {
    for (;;) {
      const double x = std * normal();
      if (std::fabs(x) <= bound) return x;
    }
  }

  const State& state() const { return s_; }
  void set_state(const State& s) { s_ = s; }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  State s_{};
};

}  // namespace scratchlm
