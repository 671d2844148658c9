// Helpers shared by the test files: fixture paths, temporary directories, the tokenizers most
// tests use (loaded once per process), random text, and running the scratchlm program.
#pragma once

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "model/config.h"
#include "tokenizer/bpe_train.h"
#include "tokenizer/vocab.h"

namespace scratchlm::test {

// A CS336 model shape (rope_theta and the variant fields at their defaults).
inline ModelConfig model_shape(std::int64_t V, std::int64_t T, std::int64_t C, std::int64_t L, std::int64_t H,
                               std::int64_t F) {
  ModelConfig c;
  c.vocab_size = V;
  c.context_length = T;
  c.d_model = C;
  c.num_layers = L;
  c.num_heads = H;
  c.d_ff = F;
  return c;
}

// ‖got − want‖ / ‖want‖ over a whole tensor (want[0 .. n), got the same length); infinite if got
// holds a NaN or an infinity; when want is exactly zero, the RMS of got instead.
template <class A, class B>
double rel_error(const A* got, const B* want, std::size_t n) {
  double diff = 0.0, norm = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::isfinite(static_cast<double>(got[i]))) return INFINITY;
    const double d = static_cast<double>(got[i]) - static_cast<double>(want[i]);
    diff += d * d;
    norm += static_cast<double>(want[i]) * static_cast<double>(want[i]);
  }
  if (norm == 0.0) return std::sqrt(diff / static_cast<double>(n));
  return std::sqrt(diff / norm);
}
template <class A, class B>
double rel_error(const std::vector<A>& got, const std::vector<B>& want) {
  EXPECT_EQ(got.size(), want.size());
  return rel_error(got.data(), want.data(), std::min(got.size(), want.size()));
}

// Runs OpenMP regions on one thread while alive. Finite differences call a forward pass on tiny
// inputs hundreds of times, where waking the thread team costs far more than the work (seconds on a
// busy machine); the ops compute each output row the same way whatever the thread count, so the
// loss is unchanged. Analytic backward passes and spec checks run with all threads.
class SingleThreaded {
 public:
  SingleThreaded() : saved_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~SingleThreaded() { omp_set_num_threads(saved_); }
  SingleThreaded(const SingleThreaded&) = delete;
  SingleThreaded& operator=(const SingleThreaded&) = delete;

 private:
  int saved_;
};

// SCRATCHLM_TEST_DATA/<relative>.
std::string data_path(std::string_view relative);

// The whole file as bytes (fails the test if it cannot be read).
std::string read_bytes(const std::string& path);
void write_bytes(const std::string& path, std::string_view bytes);

// A uint16 token file of `ids` with its sidecar, as `scratchlm tokenize` writes one.
void write_tokens(const std::string& path, const std::vector<std::uint32_t>& ids);

// A fresh empty directory under testing::TempDir(), removed (with its contents) on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  // path()/name
  std::string file(std::string_view name) const;

 private:
  std::string path_;
};

// Training options (without designated initializers, which -Wextra flags when members are left out).
BpeTrainOptions bpe_options(std::int64_t vocab_size, std::vector<std::string> specials = {}, int threads = 1,
                            std::size_t chunk_bytes = std::size_t{4} << 20);

// GPT-2 (tests/data/gpt2, no special tokens recognised unless a test adds them); loaded once.
const Vocab& gpt2_vocab();
// BPE trained on tests/data/cs336/corpus.en, vocab 500 with "<|endoftext|>" (the golden fixture's
// setting); trained once.
const Vocab& corpus_en_vocab();

// 256 single-byte tokens and <|endoftext|> (id 256): the tokenizer of the small training tests.
Vocab byte_vocab();

// The GPT-2 pre-tokenizer's pieces of text.
std::vector<std::string> pieces(std::string_view text);

// GPT-2 byte-level form ("Ġthe") → bytes; fails the test if a character is outside the map.
std::string gpt2_bytes(std::string_view text);

// A valid UTF-8 string of `n` code points drawn from mixed ranges: ASCII, Latin-1, Latin
// Extended, Greek/Cyrillic, combining marks, CJK, kana, Arabic, emoji, digits and Unicode
// whitespace (U+00A0, U+3000, U+2028, U+0085, U+2003) — never a surrogate.
std::string random_unicode(std::mt19937& rng, std::size_t n);
// `n` random bytes, skewed towards the bytes that make UTF-8 go wrong (lead and continuation
// bytes, C0/C1, F5..FF), so most strings are ill-formed.
std::string random_bytes(std::mt19937& rng, std::size_t n);

// A 64-bit LCG whose sequence Python reproduces exactly (for expected values computed there):
//   x = (x * 6364136223846793005 + 1442695040888963407) % 2**64
struct Lcg {
  std::uint64_t x;
  std::uint64_t next() { return x = x * 6364136223846793005ull + 1442695040888963407ull; }
};
// n code points from the LCG, the same as this Python (with Lcg.next as g.next):
//   RANGES = [(0x20,0x7E),(0x20,0x7E),(0x20,0x7E),(0x30,0x39),(0xA0,0xFF),(0x100,0x24F),(0x370,0x4FF),
//             (0x300,0x36F),(0x4E00,0x9FFF),(0x3040,0x30FF),(0x600,0x6FF),(0x1F300,0x1FAFF),(0x2000,0x206F)]
//   SPACES = [0x20, 0x0A, 0x09, 0x0D, 0xA0, 0x3000, 0x2028, 0x85, 0x2003]
//   def lcg_unicode(g, n):
//       out = []
//       for _ in range(n):
//           k = (g.next() >> 33) % 16
//           if k < 13: lo, hi = RANGES[k]; cp = lo + (g.next() >> 33) % (hi - lo + 1)
//           elif k == 13: cp = SPACES[(g.next() >> 33) % 9]
//           elif k == 14: cp = 0x27
//           else: cp = ord("sdmtlvre"[(g.next() >> 33) % 8])
//           out.append(chr(cp))
//       return "".join(out)
std::string lcg_unicode(Lcg& g, std::size_t n);
// `count` strings of 0..63 code points: g = Lcg(seed); [lcg_unicode(g, g.next() >> 58) for _ in range(count)]
std::vector<std::string> lcg_unicode_strings(std::uint64_t seed, int count);

// FNV-1a, 64 bits, continued from h: h = ((h ^ b) * 0x100000001b3) % 2**64 for each b.
constexpr std::uint64_t kFnvStart = 0xCBF29CE484222325ull;
inline std::uint64_t fnv1a(std::uint64_t h, std::string_view bytes) {
  for (unsigned char c : bytes) h = (h ^ c) * 0x100000001B3ull;
  return h;
}
inline std::uint64_t fnv1a_word(std::uint64_t h, std::uint64_t w) { return (h ^ w) * 0x100000001B3ull; }

// Runs SCRATCHLM_BINARY with args (no shell), stdin from /dev/null, capturing both outputs.
struct CliResult {
  int exit_code = -1;   // the exit status, or -1 if it was killed by a signal
  int signal = 0;       // the signal that killed it, or 0
  std::string out, err;
};
CliResult run_cli(const std::vector<std::string>& args);

// Asserts that a CLI run failed cleanly: a non-zero exit status (not a signal, not an abort) and
// every one of `needles` in its stderr.
void expect_clean_failure(const CliResult& r, const std::vector<std::string>& needles);

}  // namespace scratchlm::test
