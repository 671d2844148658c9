// The GPU decoder (generate/gpu_decoder.h) and its kernels (generate/cuda/decode_kernels.h)
// against the CPU, the spec. Skipped without a GPU.
//
// Kernels, on random inputs at odd sizes (K not a multiple of the 32-column chunk, rows not a
// multiple of the 16-row tile, batches of 1, 5, 13 and 32 so that every n-tile count runs):
//   - products whose inputs are bf16 already are exact in fp32 term by term, so the GPU differs
//     from a double reference only by fp32 summation: 1e-5 relative;
//   - with the RMSNorm prologue the GPU rounds x·rstd·gain to bf16 with its own fp32 rstd, the
//     reference with a double rstd: the two rstd differ by ~1e-7 relative, so about one in 10⁵
//     activations rounds to the neighbouring bf16 value (2⁻⁸ relative), which moves a row of K
//     terms by ≲ 2⁻⁸/√K: 1e-3 bounds it with room;
//   - an output stored in bf16 (h, the cache) adds the error of rounding the exact result to bf16,
//     which no bf16 kernel can beat: bound 2 × that rounding error + the above.
// The decoder, on small random models (init_params):
//   - logits at every step against the CPU model's fp32 logits, within twice the error of the GPU
//     training model's bf16 forward on the same tokens (the decoder rounds where that forward
//     rounds — weights, norm outputs, attention and feed-forward outputs — and less elsewhere:
//     q stays fp32, attention's P is not rounded, logits are fp32), which is itself within
//     PyTorch autocast's error (gpu_model_test.cpp);
//   - greedy tokens equal the CPU's greedy tokens at every position, except at near-ties: where
//     they differ, the CPU's logits of its token and of the GPU's must be within 8σ, σ the RMS
//     error of the bf16 training model's logits at that position. The decoder's logits are within
//     2× that error (the test above), so the difference of two tokens' errors is at most about
//     N(0, 2·(2σ)²): 8σ is 2.8 of its standard deviations, while a wrong token (a bug) misses by
//     the logits' spread, tens of σ. After a near-tie the GPU continues from the prompt plus the
//     CPU's tokens so far (a prefill of that prefix), so every CPU token is checked; near-ties must
//     stay rare (at most a quarter of the tokens);
//   - a prompt decoded in a batch with others, of other lengths, gives exactly the tokens it gives
//     alone, greedy and sampled (our kernels compute each sequence's row on its own, in a fixed
//     order, and the sampler's generator is counter-based);
//   - the stop rules of generate() (end of text, max new tokens, the context length).
// Sampling: the draws of the device sampler are checked against the exact distribution of
// temperature + top-p (softmax, the smallest most likely set with ties by id, renormalised) with
// a chi-square test at a 10⁻⁶ false-alarm level; tokens outside the kept set must never appear.
#include <gtest/gtest.h>

#if SCRATCHLM_CUDA

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "generate/cuda/decode_kernels.h"
#include "generate/generate.h"
#include "generate/gpu_decoder.h"
#include "gpu_test_util.h"
#include "model/gpu_model.h"
#include "model/model.h"
#include "ops/rope.h"
#include "tensor/device.h"
#include "test_util.h"
#include "util/error.h"

namespace scratchlm {
namespace {

using test::download;
using test::randn;
using test::rel_error;
using test::round_bf16;
using test::rounding_error;
using test::upload;

constexpr int kTile = kDecodeTile;

// ---- CPU references of the kernels -----------------------------------------------------------------

// bf16(x · rstd · gain) per row of K, rstd = 1/sqrt(mean(x²) + 1e-5) in double.
std::vector<float> rmsnorm_bf16(const std::vector<float>& x, const std::vector<float>& gain, int B, int K) {
  std::vector<float> out(x.size());
  for (int b = 0; b < B; ++b) {
    double ss = 0;
    for (int k = 0; k < K; ++k) ss += static_cast<double>(x[b * K + k]) * x[b * K + k];
    const double r = 1.0 / std::sqrt(ss / K + 1e-5);
    for (int k = 0; k < K; ++k) out[b * K + k] = to_float(to_bf16(static_cast<float>(x[b * K + k] * r * gain[k])));
  }
  return out;
}

// The sums of squares of each 16-column tile of each row (what the kernels keep beside x).
std::vector<float> tile_sums(const std::vector<float>& x, int B, int C) {
  const int tiles = (C + kTile - 1) / kTile;
  std::vector<float> out(static_cast<std::size_t>(B) * tiles, 0.0f);
  for (int b = 0; b < B; ++b)
    for (int c = 0; c < C; ++c) out[b * tiles + c / kTile] += x[b * C + c] * x[b * C + c];
  return out;
}

// y (B, O) = a (B, K) · Wᵀ, W (O, K), in double.
std::vector<double> matmul(const std::vector<float>& a, const std::vector<float>& w, int B, int K, int O) {
  std::vector<double> y(static_cast<std::size_t>(B) * O, 0.0);
  for (int b = 0; b < B; ++b)
    for (int o = 0; o < O; ++o) {
      double s = 0;
      for (int k = 0; k < K; ++k) s += static_cast<double>(a[b * K + k]) * w[o * K + k];
      y[b * O + o] = s;
    }
  return y;
}

std::vector<float> as_float(const std::vector<double>& v) { return {v.begin(), v.end()}; }

// Weights as the decoder stores them: bf16, scaled like a Linear layer's.
std::vector<float> weights(int O, int K, std::uint32_t seed) {
  return round_bf16(randn(static_cast<std::size_t>(O) * K, seed, 1.0f / std::sqrt(static_cast<float>(K))));
}

std::vector<float> gains(int K, std::uint32_t seed) {
  std::vector<float> g = randn(static_cast<std::size_t>(K), seed, 0.1f);
  for (float& v : g) v += 1.0f;
  return g;
}

SlotState live_slot(int length) {
  return {.status = static_cast<std::int32_t>(SlotStatus::live), .length = length, .generated = 0, .max_new = 1 << 30,
          .events = 0, .sequence = 0};
}
SlotState empty_slot() {
  SlotState s = live_slot(0);
  s.status = static_cast<std::int32_t>(SlotStatus::empty);
  return s;
}

// ---- decode_linear ---------------------------------------------------------------------------------

TEST(GpuDecodeKernels, LinearWithEachPrologueAndEpilogueMatchesTheCpu) {
  SLM_REQUIRE_GPU();
  for (const auto& [K, O] : {std::pair{200, 37}, std::pair{96, 48}})
    for (int B : {1, 5, 13, 32}) {
      SCOPED_TRACE(testing::Message() << "K " << K << " rows " << O << " batch " << B);
      const std::uint32_t seed = static_cast<std::uint32_t>(K * 100 + B);
      const std::vector<float> x = randn(static_cast<std::size_t>(B) * K, seed);
      const std::vector<float> g = gains(K, seed + 1);
      const std::vector<float> ln = rmsnorm_bf16(x, g, B, K);
      GpuBuffer dx = upload<float>(x), dss = upload<float>(tile_sums(x, B, K)), dg = upload<float>(g);

      // rmsnorm → store
      const std::vector<float> w = weights(O, K, seed + 2);
      GpuBuffer dw = upload<Bf16>(w), dout(static_cast<std::int64_t>(B) * O * 4);
      decode_linear_cuda({.input = LinearInput::rmsnorm, .epilogue = LinearEpilogue::store, .w = dw.as<Bf16>(),
                          .rows = O, .K = K, .batch = B, .x = dx.as<float>(), .ss = dss.as<float>(),
                          .gain = dg.as<float>(), .out = dout.as<float>()},
                         nullptr, false);
      EXPECT_LT(rel_error(download<float>(dout, static_cast<std::size_t>(B) * O), as_float(matmul(ln, w, B, K, O))), 1e-3);

      // bf16 → residual, and the tiles' sums of squares of the new rows
      const std::vector<float> act = round_bf16(randn(static_cast<std::size_t>(B) * K, seed + 3));
      const std::vector<float> res = randn(static_cast<std::size_t>(B) * O, seed + 4);
      const int tiles = (O + kTile - 1) / kTile;
      GpuBuffer dact = upload<Bf16>(act), dres = upload<float>(res), dss_out(static_cast<std::int64_t>(B) * tiles * 4);
      decode_linear_cuda({.input = LinearInput::bf16, .epilogue = LinearEpilogue::residual, .w = dw.as<Bf16>(),
                          .rows = O, .K = K, .batch = B, .act = dact.as<Bf16>(), .out = dres.as<float>(),
                          .ss_out = dss_out.as<float>()},
                         nullptr, false);
      std::vector<double> y = matmul(act, w, B, K, O);
      std::vector<float> want(y.size());
      for (std::size_t i = 0; i < y.size(); ++i) want[i] = static_cast<float>(res[i] + y[i]);
      EXPECT_LT(rel_error(download<float>(dres, want.size()), want), 1e-5);
      EXPECT_LT(rel_error(download<float>(dss_out, static_cast<std::size_t>(B) * tiles), tile_sums(want, B, O)), 1e-5);

      // rmsnorm → [W1; W3] → silu(a) ⊙ b in bf16
      const std::vector<float> w13 = weights(2 * O, K, seed + 5);
      GpuBuffer dw13 = upload<Bf16>(w13), dh(static_cast<std::int64_t>(B) * O * 2);
      decode_linear_cuda({.input = LinearInput::rmsnorm, .epilogue = LinearEpilogue::swiglu, .w = dw13.as<Bf16>(),
                          .rows = O, .K = K, .batch = B, .x = dx.as<float>(), .ss = dss.as<float>(),
                          .gain = dg.as<float>(), .out_bf16 = dh.as<Bf16>()},
                         nullptr, false);
      const std::vector<double> ab = matmul(ln, w13, B, K, 2 * O);
      std::vector<float> h(static_cast<std::size_t>(B) * O);
      for (int b = 0; b < B; ++b)
        for (int o = 0; o < O; ++o) {
          const double a = ab[b * 2 * O + o], v = ab[b * 2 * O + O + o];
          h[b * O + o] = static_cast<float>(a / (1.0 + std::exp(-a)) * v);
        }
      EXPECT_LT(rel_error(download<Bf16>(dh, h.size()), h), 2 * rounding_error(h) + 1e-3);
    }
}

// The qkv epilogue: RoPE at each slot's own position, q in fp32, k and v into the cache of live
// slots only (every other cache entry keeps its value), grouped-query layouts included.
TEST(GpuDecodeKernels, QkvEpilogueRotatesAndWritesTheCacheOfLiveSlots) {
  SLM_REQUIRE_GPU();
  constexpr int K = 200, capacity = 40;
  constexpr float kSentinel = 7.0f;
  for (const auto& [H, Hkv, D] : {std::tuple{3, 1, 16}, std::tuple{2, 2, 32}})
    for (int B : {1, 5, 32}) {
      SCOPED_TRACE(testing::Message() << "H " << H << " Hkv " << Hkv << " D " << D << " batch " << B);
      const int Cq = H * D, Ckv = Hkv * D, O = Cq + 2 * Ckv;
      const std::uint32_t seed = static_cast<std::uint32_t>(H * 1000 + D + B);
      const std::vector<float> x = randn(static_cast<std::size_t>(B) * K, seed);
      const std::vector<float> g = gains(K, seed + 1);
      const std::vector<float> w = weights(O, K, seed + 2);
      std::vector<SlotState> slots;
      for (int b = 0; b < B; ++b) slots.push_back(b == 1 ? empty_slot() : live_slot((b * 17 + 3) % capacity));
      const RopeTable rope = make_rope_table(10000.0, D, capacity);
      GpuBuffer dx = upload<float>(x), dss = upload<float>(tile_sums(x, B, K)), dg = upload<float>(g);
      GpuBuffer dw = upload<Bf16>(w), dq(static_cast<std::int64_t>(B) * Cq * 4);
      GpuBuffer dslots(static_cast<std::int64_t>(B * sizeof(SlotState)));
      copy_to_gpu(dslots.data(), slots.data(), dslots.bytes());
      GpuBuffer dcos = upload<float>(rope.cos), dsin = upload<float>(rope.sin);
      const std::size_t cache_n = static_cast<std::size_t>(B) * Hkv * capacity * D;
      GpuBuffer dk = upload<Bf16>(std::vector<float>(cache_n, kSentinel)), dv = upload<Bf16>(std::vector<float>(cache_n, kSentinel));
      decode_linear_cuda({.input = LinearInput::rmsnorm, .epilogue = LinearEpilogue::qkv, .w = dw.as<Bf16>(),
                          .rows = O, .K = K, .batch = B, .x = dx.as<float>(), .ss = dss.as<float>(),
                          .gain = dg.as<float>(), .out = dq.as<float>(),
                          .qkv = {.slots = dslots.as<SlotState>(), .k_cache = dk.as<Bf16>(), .v_cache = dv.as<Bf16>(),
                                  .rope_cos = dcos.as<float>(), .rope_sin = dsin.as<float>(), .H = H, .Hkv = Hkv,
                                  .D = D, .capacity = capacity}},
                         nullptr, false);
      const std::vector<double> y = matmul(rmsnorm_bf16(x, g, B, K), w, B, K, O);
      const std::vector<float> q = download<float>(dq, static_cast<std::size_t>(B) * Cq);
      const std::vector<float> kc = download<Bf16>(dk, cache_n), vc = download<Bf16>(dv, cache_n);
      std::vector<float> q_got, q_want, kv_got, kv_want;
      std::vector<char> written(cache_n, 0);
      for (int b = 0; b < B; ++b) {
        if (b == 1) continue;
        const int pos = slots[b].length;
        auto rotated = [&](int base, int c) {   // element c of a head-interleaved block starting at row `base`
          const int d = c % D, k = d / 2;
          const double cs = rope.cos[pos * (D / 2) + k], sn = rope.sin[pos * (D / 2) + k];
          const double x0 = y[b * O + base + c - d % 2], x1 = y[b * O + base + c - d % 2 + 1];
          return d % 2 == 0 ? x0 * cs - x1 * sn : x0 * sn + x1 * cs;
        };
        for (int c = 0; c < Cq; ++c) {
          q_got.push_back(q[b * Cq + c]);
          q_want.push_back(static_cast<float>(rotated(0, c)));
        }
        for (int c = 0; c < Ckv; ++c) {
          const std::size_t at = ((static_cast<std::size_t>(b) * Hkv + c / D) * capacity + pos) * D + c % D;
          kv_got.push_back(kc[at]);
          kv_want.push_back(static_cast<float>(rotated(Cq, c)));
          kv_got.push_back(vc[at]);
          kv_want.push_back(static_cast<float>(y[b * O + Cq + Ckv + c]));
          written[at] = 1;
        }
      }
      EXPECT_LT(rel_error(q_got, q_want), 1e-3);
      EXPECT_LT(rel_error(kv_got, kv_want), 2 * rounding_error(kv_want) + 1e-3);
      for (std::size_t i = 0; i < cache_n; ++i)
        if (!written[i]) {
          ASSERT_TRUE(kc[i] == kSentinel && vc[i] == kSentinel) << "cache entry " << i << " was written";
        }
    }
}

// ---- decode_attention --------------------------------------------------------------------------------

struct AttentionCase {
  int H, Hkv, D, capacity, window;
  std::vector<int> lengths;   // keys per slot (the current token's included); 0: the slot is empty
};

TEST(GpuDecodeKernels, AttentionOverTheCacheMatchesTheCpu) {
  SLM_REQUIRE_GPU();
  const std::vector<AttentionCase> cases = {
      {2, 2, 16, 20, 0, {1, 7, 20}},
      {4, 2, 32, 300, 0, {1, 63, 0, 64, 65, 129, 300}},   // several splits, GQA, an empty slot
      {3, 3, 64, 1024, 0, {1000, 5}},
      {2, 1, 128, 200, 0, {200, 130}},
      {2, 2, 32, 50, 50, {170, 50, 12}},                   // a sliding window over a ring of 50 rows
  };
  for (const AttentionCase& t : cases) {
    const int B = static_cast<int>(t.lengths.size()), H = t.H, Hkv = t.Hkv, D = t.D, cap = t.capacity;
    SCOPED_TRACE(testing::Message() << "H " << H << " Hkv " << Hkv << " D " << D << " capacity " << cap << " window "
                                    << t.window);
    const std::uint32_t seed = static_cast<std::uint32_t>(D * 7 + cap);
    const std::size_t cache_n = static_cast<std::size_t>(B) * Hkv * cap * D;
    const std::vector<float> q = randn(static_cast<std::size_t>(B) * H * D, seed);
    const std::vector<float> kc = round_bf16(randn(cache_n, seed + 1)), vc = round_bf16(randn(cache_n, seed + 2));
    std::vector<SlotState> slots;
    for (int len : t.lengths) slots.push_back(len == 0 ? empty_slot() : live_slot(len - 1));
    GpuBuffer dq = upload<float>(q), dk = upload<Bf16>(kc), dv = upload<Bf16>(vc);
    GpuBuffer dslots(static_cast<std::int64_t>(B * sizeof(SlotState)));
    copy_to_gpu(dslots.data(), slots.data(), dslots.bytes());
    const int splits = decode_attention_splits(cap, t.window);
    GpuBuffer partials(static_cast<std::int64_t>(B) * H * splits * (D + 2) * 4), counters(static_cast<std::int64_t>(B) * H * 4);
    copy_to_gpu(counters.data(), std::vector<int>(static_cast<std::size_t>(B) * H, 0).data(), counters.bytes());
    GpuBuffer dout = upload<Bf16>(std::vector<float>(static_cast<std::size_t>(B) * H * D, 5.0f));
    const DecodeAttention op{.out = dout.as<Bf16>(), .q = dq.as<float>(), .k_cache = dk.as<Bf16>(),
                             .v_cache = dv.as<Bf16>(), .slots = dslots.as<SlotState>(),
                             .partials = partials.as<float>(), .counters = counters.as<int>(), .batch = B, .H = H,
                             .Hkv = Hkv, .D = D, .capacity = cap, .window = t.window};
    decode_attention_cuda(op, nullptr, false);
    const std::vector<float> out = download<Bf16>(dout, static_cast<std::size_t>(B) * H * D);
    std::vector<float> got, want;
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h) {
        const float* o = out.data() + (static_cast<std::size_t>(b) * H + h) * D;
        if (t.lengths[b] == 0) {
          for (int d = 0; d < D; ++d) EXPECT_EQ(o[d], 0.0f) << "an empty slot's output is zero";
          continue;
        }
        const int len = t.lengths[b], first = t.window > 0 ? std::max(0, len - t.window) : 0;
        const int kvh = h / (H / Hkv);
        std::vector<double> s;
        double mx = -INFINITY;
        for (int p = first; p < len; ++p) {
          const float* k = kc.data() + ((static_cast<std::size_t>(b) * Hkv + kvh) * cap + p % cap) * D;
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += static_cast<double>(q[(b * H + h) * D + d]) * k[d];
          s.push_back(dot / std::sqrt(static_cast<double>(D)));
          mx = std::max(mx, s.back());
        }
        double sum = 0;
        for (double& v : s) sum += (v = std::exp(v - mx));
        for (int d = 0; d < D; ++d) {
          double acc = 0;
          for (int p = first; p < len; ++p)
            acc += s[p - first] * vc[((static_cast<std::size_t>(b) * Hkv + kvh) * cap + p % cap) * D + d];
          got.push_back(o[d]);
          want.push_back(static_cast<float>(acc / sum));
        }
      }
    EXPECT_LT(rel_error(got, want), 2 * rounding_error(want) + 1e-5);
    // Again: the split counters were left at zero, and the result repeats bit for bit.
    decode_attention_cuda(op, nullptr, false);
    EXPECT_EQ(download<Bf16>(dout, out.size()), out);
  }
}

// ---- kv_write ----------------------------------------------------------------------------------------

TEST(GpuDecodeKernels, KvWriteCopiesAPrefillAndRotatesADecodeStep) {
  SLM_REQUIRE_GPU();
  constexpr int H = 4, Hkv = 2, D = 32, cap = 24, B = 3, P = 19;
  constexpr int Cq = H * D, Ckv = Hkv * D, W = Cq + 2 * Ckv;
  const std::size_t cache_n = static_cast<std::size_t>(B) * Hkv * cap * D;
  const RopeTable rope = make_rope_table(10000.0, D, cap);
  GpuBuffer dcos = upload<float>(rope.cos), dsin = upload<float>(rope.sin);
  GpuBuffer dk = upload<Bf16>(std::vector<float>(cache_n, 3.0f)), dv = upload<Bf16>(std::vector<float>(cache_n, 3.0f));
  auto at = [&](int slot, int head, int pos, int d) {
    return ((static_cast<std::size_t>(slot) * Hkv + head) * cap + pos) * D + d;
  };
  // prefill: rows are positions 0 .. P−1 of slot 2, copied as they are
  const std::vector<float> pre = round_bf16(randn(static_cast<std::size_t>(P) * W, 11));
  GpuBuffer dpre = upload<Bf16>(pre);
  kv_write_cuda({.qkv = dpre.as<Bf16>(), .rows = P, .slot = 2, .k_cache = dk.as<Bf16>(), .v_cache = dv.as<Bf16>(),
                 .H = H, .Hkv = Hkv, .D = D, .capacity = cap},
                nullptr);
  std::vector<float> kc = download<Bf16>(dk, cache_n), vc = download<Bf16>(dv, cache_n);
  for (int slot = 0; slot < B; ++slot)
    for (int head = 0; head < Hkv; ++head)
      for (int pos = 0; pos < cap; ++pos)
        for (int d = 0; d < D; ++d) {
          const bool mine = slot == 2 && pos < P;
          ASSERT_EQ(kc[at(slot, head, pos, d)], mine ? pre[pos * W + Cq + head * D + d] : 3.0f);
          ASSERT_EQ(vc[at(slot, head, pos, d)], mine ? pre[pos * W + Cq + Ckv + head * D + d] : 3.0f);
        }
  // decode: row b is slot b at its position, RoPE on q and k; slot 1 is empty
  const std::vector<float> rows = round_bf16(randn(static_cast<std::size_t>(B) * W, 12));
  const std::vector<SlotState> slots = {live_slot(5), empty_slot(), live_slot(23)};
  GpuBuffer drows = upload<Bf16>(rows), dq(static_cast<std::int64_t>(B) * Cq * 4);
  GpuBuffer dslots(static_cast<std::int64_t>(B * sizeof(SlotState)));
  copy_to_gpu(dslots.data(), slots.data(), dslots.bytes());
  kv_write_cuda({.qkv = drows.as<Bf16>(), .rows = B, .slots = dslots.as<SlotState>(), .q_out = dq.as<float>(),
                 .rope_cos = dcos.as<float>(), .rope_sin = dsin.as<float>(), .k_cache = dk.as<Bf16>(),
                 .v_cache = dv.as<Bf16>(), .H = H, .Hkv = Hkv, .D = D, .capacity = cap},
                nullptr);
  kc = download<Bf16>(dk, cache_n);
  vc = download<Bf16>(dv, cache_n);
  const std::vector<float> q = download<float>(dq, static_cast<std::size_t>(B) * Cq);
  std::vector<float> q_got, q_want, k_got, k_want;
  for (int b : {0, 2}) {
    const int pos = slots[b].length;
    auto rotated = [&](int base, int c) {
      const int d = c % D;
      const double cs = rope.cos[pos * (D / 2) + d / 2], sn = rope.sin[pos * (D / 2) + d / 2];
      const double x0 = rows[b * W + base + c - d % 2], x1 = rows[b * W + base + c - d % 2 + 1];
      return d % 2 == 0 ? x0 * cs - x1 * sn : x0 * sn + x1 * cs;
    };
    for (int c = 0; c < Cq; ++c) {
      q_got.push_back(q[b * Cq + c]);
      q_want.push_back(static_cast<float>(rotated(0, c)));
    }
    for (int c = 0; c < Ckv; ++c) {
      k_got.push_back(kc[at(b, c / D, pos, c % D)]);
      k_want.push_back(static_cast<float>(rotated(Cq, c)));
      EXPECT_EQ(vc[at(b, c / D, pos, c % D)], rows[b * W + Cq + Ckv + c]);
    }
  }
  EXPECT_LT(rel_error(q_got, q_want), 1e-6);
  EXPECT_LT(rel_error(k_got, k_want), 2 * rounding_error(k_want) + 1e-6);
  for (int head = 0; head < Hkv; ++head)
    for (int d = 0; d < D; ++d) EXPECT_EQ(kc[at(1, head, 0, d)], 3.0f) << "the empty slot's cache is untouched";
}

// ---- decode_sample -------------------------------------------------------------------------------------

SampleParams greedy_params(std::int32_t stop_id, std::int32_t context) {
  return {.temperature = 0.0f, .top_p = 1.0f, .seed = 0, .stop_id = stop_id, .context_length = context};
}

TEST(GpuDecodeKernels, SamplerFollowsTheStopRulesAndFeedsTheNextEmbedding) {
  SLM_REQUIRE_GPU();
  constexpr int V = 37, C = 40, context = 30;
  const std::vector<float> emb = randn(static_cast<std::size_t>(V) * C, 5);
  // Each slot's logits: a clear maximum at `best[b]`, except slot 0 whose maximum is tied at 9 and 21.
  const std::vector<int> best = {9, 4, 6, 11, 12, 13, 14};
  const int B = static_cast<int>(best.size());
  std::vector<float> logits = randn(static_cast<std::size_t>(B) * V, 6);
  for (int b = 0; b < B; ++b) logits[b * V + best[b]] = 10.0f;
  logits[0 * V + 21] = 10.0f;
  std::vector<SlotState> slots(static_cast<std::size_t>(B), live_slot(3));
  slots[0].max_new = 5;                          // 0: a token (9: the lower id of the tie), still live
  slots[1].generated = slots[1].max_new = 4;     // 1: at its limit: stops without a token
  // 2: its best token is the stop id (6): stops at end of text, no token
  slots[3].length = context - 1;                 // 3: the fed token fills the context: the token, then stop
  slots[4].generated = 6, slots[4].max_new = 7;  // 4: its last allowed token, then stop
  slots[5] = empty_slot();                       // 5: empty: nothing, its row zeroed
  slots[6].length = context - 2;                 // 6: one position left after this token
  const SampleRounds r = decode_sample_rounds(logits, slots, emb, V, C, greedy_params(6, context), true, 1);
  struct Want {
    int token;
    SlotStatus status;
    int generated, length;
  };
  const std::vector<Want> want = {{9, SlotStatus::live, 1, 4},
                                  {-1, SlotStatus::max_new_tokens, 4, 4},
                                  {-1, SlotStatus::end_of_text, 0, 4},
                                  {11, SlotStatus::context_length, 1, context},
                                  {12, SlotStatus::max_new_tokens, 7, 4},
                                  {0, SlotStatus::empty, 0, 0},
                                  {14, SlotStatus::live, 1, context - 1}};
  const int tiles = (C + kTile - 1) / kTile;
  for (int b = 0; b < B; ++b) {
    SCOPED_TRACE(testing::Message() << "slot " << b);
    const SlotState& s = r.slots[b];
    EXPECT_EQ(s.status, static_cast<int>(want[b].status));
    EXPECT_EQ(s.generated, want[b].generated);
    EXPECT_EQ(s.length, want[b].length);
    const SlotRecord& rec = r.records[b];
    if (want[b].status == SlotStatus::empty) {
      EXPECT_EQ(s.events, 0);
      EXPECT_EQ(rec.token, -1);
      EXPECT_EQ(rec.status, -1) << "an empty slot writes no record";
    } else {
      EXPECT_EQ(s.events, 1);
      EXPECT_EQ(rec.token, want[b].token);
      EXPECT_EQ(rec.status, static_cast<int>(want[b].status));
      EXPECT_EQ(rec.generated, want[b].generated);
      EXPECT_EQ(rec.length, want[b].length);
    }
    // The next step's input: the embedding of a live slot's token, zeros otherwise.
    const bool feeds = want[b].status == SlotStatus::live;
    std::vector<float> row(emb.begin() + (feeds ? want[b].token : 0) * C, emb.begin() + (feeds ? want[b].token + 1 : 1) * C);
    if (!feeds) row.assign(static_cast<std::size_t>(C), 0.0f);
    EXPECT_EQ(std::vector<float>(r.x.begin() + b * C, r.x.begin() + (b + 1) * C), row);
    const std::vector<float> sums = tile_sums(row, 1, C);
    EXPECT_LT(rel_error(std::vector<float>(r.ss.begin() + b * tiles, r.ss.begin() + (b + 1) * tiles), sums), 1e-6);
  }
}

// The exact distribution generate.cpp's sample_token draws from (the spec), in double.
std::vector<double> nucleus(const std::vector<float>& z, double temperature, double top_p) {
  const int V = static_cast<int>(z.size());
  const double mx = *std::max_element(z.begin(), z.end());
  std::vector<double> p(static_cast<std::size_t>(V));
  double sum = 0;
  for (int v = 0; v < V; ++v) sum += (p[v] = std::exp((z[v] - mx) / temperature));
  std::vector<int> order(static_cast<std::size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });   // ties by id
  std::vector<double> out(static_cast<std::size_t>(V), 0.0);
  double cum = 0, kept = 0;
  for (int v : order) {
    out[v] = p[v];
    kept += p[v];
    if ((cum += p[v]) >= top_p * sum) break;
  }
  for (double& x : out) x /= kept;
  return out;
}

// The 1 − 10⁻⁶ quantile of chi-square with df degrees of freedom (Wilson–Hilferty; z = 4.753).
double chi2_limit(int df) {
  const double a = 2.0 / (9.0 * df);
  return df * std::pow(1.0 - a + 4.753 * std::sqrt(a), 3.0);
}

// Draws `rounds` × 32 tokens (32 slots, each its own sequence of the generator) and checks them
// against the exact probabilities: counts per token (tokens whose expected count is under 5 are
// pooled) by chi-square, and never a token outside the kept set.
void check_distribution(const std::vector<float>& z, double temperature, double top_p, int rounds) {
  SCOPED_TRACE(testing::Message() << "V " << z.size() << " temperature " << temperature << " top-p " << top_p);
  const int V = static_cast<int>(z.size()), B = 32;
  std::vector<float> logits;
  for (int b = 0; b < B; ++b) logits.insert(logits.end(), z.begin(), z.end());
  std::vector<SlotState> slots;
  for (int b = 0; b < B; ++b) {
    SlotState s = live_slot(0);
    s.sequence = 1000 + b;
    slots.push_back(s);
  }
  const SampleParams params{.temperature = static_cast<float>(temperature), .top_p = static_cast<float>(top_p),
                            .seed = 77, .stop_id = -1, .context_length = 1 << 30};
  const SampleRounds r = decode_sample_rounds(logits, slots, std::vector<float>(static_cast<std::size_t>(V) * 8, 0.0f), V,
                                              8, params, false, rounds);
  std::vector<double> count(static_cast<std::size_t>(V), 0.0);
  for (const SlotRecord& rec : r.records) {
    ASSERT_TRUE(rec.token >= 0 && rec.token < V);
    count[rec.token] += 1;
  }
  const double n = static_cast<double>(r.records.size());
  const std::vector<double> p = nucleus(z, temperature, top_p);
  double chi2 = 0, pooled_obs = 0, pooled_exp = 0;
  int cells = 0;
  for (int v = 0; v < V; ++v) {
    if (p[v] == 0) {
      ASSERT_EQ(count[v], 0) << "token " << v << " is outside the kept set";
      continue;
    }
    const double e = n * p[v];
    if (e < 5) {
      pooled_obs += count[v], pooled_exp += e;
      continue;
    }
    chi2 += (count[v] - e) * (count[v] - e) / e;
    cells += 1;
  }
  if (pooled_exp > 0) chi2 += (pooled_obs - pooled_exp) * (pooled_obs - pooled_exp) / pooled_exp, cells += 1;
  if (cells > 1) {
    EXPECT_LT(chi2, chi2_limit(cells - 1)) << cells << " cells";
  }
}

TEST(GpuDecodeKernels, SampledTokensFollowTemperatureAndTopP) {
  SLM_REQUIRE_GPU();
  const std::vector<float> small = {2.0f, -1.0f, 0.5f, 3.0f, 0.5f, -4.0f, 1.5f, 0.0f, 2.5f, -0.5f, 1.0f, -2.0f};
  check_distribution(small, 1.0, 1.0, 2000);
  check_distribution(small, 0.7, 0.8, 2000);
  check_distribution(small, 1.5, 0.3, 2000);
  // Ties at the cut: four equal logits, and the mass crosses top_p in their middle: the lowest ids stay.
  check_distribution({1.0f, 1.0f, 1.0f, 1.0f, 0.0f}, 1.0, 0.5, 1000);
  // A large vocabulary: the radix select over many masses of every size.
  std::vector<float> big = randn(5000, 9, 3.0f);
  check_distribution(big, 1.0, 0.9, 1000);
  check_distribution(big, 0.5, 0.95, 1000);
}

// ---- the decoder against the CPU model ---------------------------------------------------------------

using test::model_shape;
// Head dim 32 (prefill on tensor cores), d_ff not a multiple of 32, V not a multiple of 16.
ModelConfig config_a() { return model_shape(300, 40, 96, 2, 3, 200); }
// Head dim 16 (prefill on CUDA cores), a context past one attention split of 64 keys.
ModelConfig config_b() { return model_shape(129, 70, 64, 1, 4, 96); }

Model random_model(const ModelConfig& c, std::uint64_t seed) {
  Model m(c);
  Rng rng(seed);
  init_params(m.layout, m.params.data(), rng);
  return m;
}

std::vector<std::int32_t> random_tokens(std::int64_t n, std::int64_t V, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<std::int32_t> t(static_cast<std::size_t>(n));
  for (auto& v : t) v = static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(V)));
  return t;
}

// The CPU model's logits after prompt + tokens[0..i), for i = 0 .. tokens.size() (KV cache).
std::vector<std::vector<float>> cpu_logits(Model& m, const std::vector<std::int32_t>& prompt,
                                           const std::vector<std::int32_t>& tokens) {
  const ModelConfig& c = m.config;
  KvCache cache(c, c.context_length);
  Activations pre(c, 1, static_cast<std::int64_t>(prompt.size()), Activations::WithBackward::no);
  model_forward(pre, m, prompt.data(), 1, static_cast<std::int64_t>(prompt.size()), &cache);
  std::vector<std::vector<float>> out = {std::vector<float>(pre.logits.begin(), pre.logits.begin() + c.vocab_size)};
  Activations step(c, 1, 1, Activations::WithBackward::no);
  for (std::int32_t t : tokens) {
    if (cache.length >= c.context_length) break;
    model_forward(step, m, &t, 1, 1, &cache);
    out.emplace_back(step.logits.begin(), step.logits.begin() + c.vocab_size);
  }
  return out;
}

// The GPU training model's bf16 logits over prompt + tokens: rows P−1 .. give the same positions.
std::vector<std::vector<float>> bf16_model_logits(const Model& m, const std::vector<std::int32_t>& prompt,
                                                  const std::vector<std::int32_t>& tokens) {
  const ModelConfig& c = m.config;
  std::vector<std::int32_t> ids = prompt;
  ids.insert(ids.end(), tokens.begin(), tokens.end());
  if (static_cast<std::int64_t>(ids.size()) > c.context_length) ids.resize(static_cast<std::size_t>(c.context_length));
  const auto T = static_cast<std::int64_t>(ids.size());
  GpuModel gm(c, {.precision = GpuPrecision::bf16, .batch = 1, .grad_accum = 1, .with_backward = false});
  gm.set_params(m.params.data());
  std::vector<float> logits(static_cast<std::size_t>(T * c.vocab_size));
  std::vector<std::int32_t> targets(static_cast<std::size_t>(T), 0);
  gm.forward(ids.data(), targets.data(), 1, T, logits.data());
  std::vector<std::vector<float>> out;
  for (std::int64_t t = static_cast<std::int64_t>(prompt.size()) - 1; t < T; ++t)
    out.emplace_back(logits.begin() + t * c.vocab_size, logits.begin() + (t + 1) * c.vocab_size);
  return out;
}

struct Decoded {
  std::vector<std::int32_t> tokens;
  std::vector<std::vector<float>> logits;   // the logits each token was drawn from
  StopReason stop = StopReason::max_new_tokens;
};

// Runs prompts in slots 0, 1, ... of `dec` step by step, keeping every token's logits.
std::vector<Decoded> decode_with_logits(GpuDecoder& dec, const std::vector<std::vector<std::int32_t>>& prompts,
                                        std::int64_t max_new) {
  std::vector<Decoded> out(prompts.size());
  std::vector<char> live(prompts.size(), 1);
  for (std::size_t i = 0; i < prompts.size(); ++i) dec.start(static_cast<std::int64_t>(i), prompts[i], max_new, static_cast<std::int64_t>(i));
  for (bool any = true; any;) {
    any = false;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      if (!live[i]) continue;
      const std::vector<float> z = dec.logits(static_cast<std::int64_t>(i));
      for (const GpuDecoder::SlotEvent& e : dec.events(static_cast<std::int64_t>(i))) {
        if (e.token >= 0) {
          out[i].tokens.push_back(e.token);
          out[i].logits.push_back(z);
        }
        if (!e.live) live[i] = 0, out[i].stop = e.stop;
      }
      any = any || live[i];
    }
    if (any) dec.step();
  }
  return out;
}

double rms_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
  return std::sqrt(s / static_cast<double>(a.size()));
}

std::vector<float> concat(const std::vector<std::vector<float>>& rows) {
  std::vector<float> out;
  for (const auto& r : rows) out.insert(out.end(), r.begin(), r.end());
  return out;
}

struct Mode {
  DecoderGemm gemm;
  bool pdl;
  const char* name;
};
const Mode kModes[] = {{DecoderGemm::own, false, "own kernels"},
                       {DecoderGemm::own, true, "own kernels, PDL"},
                       {DecoderGemm::cublas, false, "cuBLASLt"}};

TEST(GpuDecoder, LogitsAtEveryStepMatchTheCpuModelWithinTheBf16ModelsError) {
  SLM_REQUIRE_GPU();
  for (const ModelConfig& c : {config_a(), config_b()}) {
    Model model = random_model(c, 3);
    const std::vector<std::vector<std::int32_t>> prompts = {
        random_tokens(5, c.vocab_size, 1), random_tokens(c.context_length - 12, c.vocab_size, 2)};
    std::vector<Decoded> first_mode;
    for (const Mode& mode : kModes) {
      SCOPED_TRACE(testing::Message() << "d_model " << c.d_model << ", " << mode.name);
      GpuDecoder dec(model, {.max_batch = 2, .gemm = mode.gemm, .pdl = mode.pdl});
      const std::vector<Decoded> got = decode_with_logits(dec, prompts, 20);
      for (std::size_t i = 0; i < prompts.size(); ++i) {
        ASSERT_FALSE(got[i].tokens.empty());
        const auto want = cpu_logits(model, prompts[i], got[i].tokens);
        const auto bf16 = bf16_model_logits(model, prompts[i], got[i].tokens);
        const std::size_t n = got[i].tokens.size();
        ASSERT_GE(want.size(), n);
        ASSERT_GE(bf16.size(), n);
        double worst = 0, worst_bf16 = 0;
        for (std::size_t s = 0; s < n; ++s) {
          worst = std::max(worst, rel_error(got[i].logits[s], want[s]));
          worst_bf16 = std::max(worst_bf16, rel_error(bf16[s], want[s]));
          // greedy: the token is the argmax of the decoder's own logits, lowest id on ties
          const auto& z = got[i].logits[s];
          EXPECT_EQ(got[i].tokens[s], std::max_element(z.begin(), z.end()) - z.begin()) << "step " << s;
        }
        const std::vector<std::vector<float>> want_n(want.begin(), want.begin() + static_cast<std::ptrdiff_t>(n));
        const std::vector<std::vector<float>> bf16_n(bf16.begin(), bf16.begin() + static_cast<std::ptrdiff_t>(n));
        const double total = rel_error(concat(got[i].logits), concat(want_n));
        const double total_bf16 = rel_error(concat(bf16_n), concat(want_n));
        std::printf("  %s, d_model %lld, prompt %zu: decoder logits error %.2e (worst step %.2e), bf16 model %.2e (%.2e)\n",
                    mode.name, static_cast<long long>(c.d_model), i, total, worst, total_bf16, worst_bf16);
        EXPECT_LE(total, 2 * total_bf16);
        EXPECT_LE(worst, 3 * worst_bf16);
        EXPECT_LT(total, 2e-2);
      }
      // Programmatic dependent launch changes when kernels start, never what they compute.
      if (mode.gemm == DecoderGemm::own && !mode.pdl) first_mode = got;
      if (mode.gemm == DecoderGemm::own && mode.pdl)
        for (std::size_t i = 0; i < prompts.size(); ++i) {
          EXPECT_EQ(got[i].tokens, first_mode[i].tokens);
          EXPECT_EQ(got[i].logits, first_mode[i].logits);
        }
    }
  }
}

// Greedy tokens equal the CPU's at every position, up to near-ties (see the file comment for the
// 8σ bound); after a near-tie the GPU continues from the CPU's tokens, so that every one of them is
// checked.
TEST(GpuDecoder, GreedyMatchesTheCpuUpToBf16NearTies) {
  SLM_REQUIRE_GPU();
  const ModelConfig c = config_a();
  Model model = random_model(c, 4);
  const std::int64_t max_new = 24;
  const SampleOptions greedy{.temperature = 0.0, .top_p = 1.0};
  std::vector<std::vector<std::int32_t>> prompts;
  for (std::int64_t len : {1, 7, 16, 38, 40, 23}) prompts.push_back(random_tokens(len, c.vocab_size, 100 + len));
  std::vector<GenerateResult> cpu;
  for (const auto& p : prompts) {
    Rng rng(0);
    cpu.push_back(generate(model, p, max_new, greedy, -1, rng));
  }
  for (const Mode& mode : kModes) {
    SCOPED_TRACE(mode.name);
    GpuDecoder dec(model, {.max_batch = 4, .gemm = mode.gemm, .pdl = mode.pdl});
    const std::vector<GenerateResult> batched = dec.generate(prompts, max_new, greedy, -1, 0);   // 6 prompts, 4 slots
    std::int64_t equal = 0, ties = 0, planned = 0;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      const std::vector<std::int32_t>& want = cpu[i].tokens;
      planned += static_cast<std::int64_t>(want.size());
      // The GPU's tokens from position `from` of the CPU's on (first the batched run's, from 0).
      GenerateResult got = batched[i];
      std::size_t from = 0;
      for (;;) {
        std::size_t j = 0;
        while (from + j < want.size() && j < got.tokens.size() && want[from + j] == got.tokens[j]) ++j;
        equal += static_cast<std::int64_t>(j);
        if (from + j == want.size() && j == got.tokens.size()) {
          EXPECT_EQ(got.stop, cpu[i].stop) << "prompt " << i;
          break;
        }
        ASSERT_LT(from + j, want.size()) << "prompt " << i << ": the GPU generated more tokens than the CPU";
        ASSERT_LT(j, got.tokens.size()) << "prompt " << i << ": the GPU stopped early";
        // A divergence at position k = from + j: the CPU's logits there must make it a near-tie.
        const std::size_t k = from + j;
        const std::vector<std::int32_t> prefix(want.begin(), want.begin() + static_cast<std::ptrdiff_t>(k));
        const std::vector<float> z = cpu_logits(model, prompts[i], prefix).back();
        const std::vector<float> zb = bf16_model_logits(model, prompts[i], prefix).back();
        const double gap = z[want[k]] - z[got.tokens[j]];
        const double sigma = rms_difference(zb, z);
        std::printf("  %s, prompt %zu: differs at token %zu, CPU logit gap %.3g, bf16 sigma %.3g\n", mode.name, i, k,
                    gap, sigma);
        EXPECT_GE(gap, 0.0);
        ASSERT_LE(gap, 8 * sigma) << "prompt " << i << " token " << k << ": not a near-tie";
        ties += 1;
        equal += 1;   // the CPU's token is taken as the shared one
        if (k + 1 == want.size()) {   // it was the CPU's last token: nothing left to compare
          EXPECT_GE(got.tokens.size(), j + 1);
          break;
        }
        // Continue from the shared prefix: the prompt, the CPU's tokens up to and including k.
        std::vector<std::int32_t> resumed = prompts[i];
        resumed.insert(resumed.end(), want.begin(), want.begin() + static_cast<std::ptrdiff_t>(k + 1));
        from = k + 1;
        got = dec.generate({resumed}, max_new - static_cast<std::int64_t>(from), greedy, -1, 0)[0];
      }
    }
    EXPECT_EQ(equal, planned);
    EXPECT_LE(ties * 4, planned) << "near-ties are rare: more than a quarter of the tokens differ";
  }
}

GenerateResult decode_alone(GpuDecoder& dec, const std::vector<std::int32_t>& prompt, std::int64_t max_new,
                            std::int64_t sequence) {
  GenerateResult r;
  dec.start(0, prompt, max_new, sequence);
  for (;;) {
    for (const GpuDecoder::SlotEvent& e : dec.events(0)) {
      if (e.token >= 0) r.tokens.push_back(e.token);
      if (!e.live) {
        r.stop = e.stop;
        return r;
      }
    }
    dec.step();
  }
}

TEST(GpuDecoder, BatchedPromptsOfDifferentLengthsGiveTheTokensTheyGiveAlone) {
  SLM_REQUIRE_GPU();
  const ModelConfig c = config_a();
  Model model = random_model(c, 5);
  std::vector<std::vector<std::int32_t>> prompts;
  for (std::int64_t len : {1, 3, 17, 9, 40, 25, 33}) prompts.push_back(random_tokens(len, c.vocab_size, 200 + len));
  const std::int64_t max_new = 15;
  for (const SampleOptions& opt : {SampleOptions{.temperature = 0.0, .top_p = 1.0},
                                   SampleOptions{.temperature = 0.9, .top_p = 0.9}}) {
    SCOPED_TRACE(testing::Message() << "temperature " << opt.temperature);
    GpuDecoder batched(model, {.max_batch = 3, .in_flight = 5});   // 7 prompts through 3 slots
    const std::vector<GenerateResult> together = batched.generate(prompts, max_new, opt, -1, 42);
    GpuDecoder one(model, {.max_batch = 1});
    one.set_sampling(opt, -1, 42);
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      const GenerateResult alone = decode_alone(one, prompts[i], max_new, static_cast<std::int64_t>(i));
      EXPECT_EQ(together[i].tokens, alone.tokens) << "prompt " << i;
      EXPECT_EQ(together[i].stop, alone.stop) << "prompt " << i;
    }
    // Stepping the host one token at a time (in_flight 1) changes nothing either.
    GpuDecoder waiting(model, {.max_batch = 2, .in_flight = 1});
    const std::vector<GenerateResult> again = waiting.generate(prompts, max_new, opt, -1, 42);
    for (std::size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(again[i].tokens, together[i].tokens) << "prompt " << i;
    const DecodeTimes& t = batched.times();
    std::int64_t tokens = 0, prompt_tokens = 0;
    for (std::size_t i = 0; i < prompts.size(); ++i)
      tokens += static_cast<std::int64_t>(together[i].tokens.size()), prompt_tokens += static_cast<std::int64_t>(prompts[i].size());
    EXPECT_EQ(t.generated_tokens, tokens);
    EXPECT_EQ(t.prompt_tokens, prompt_tokens);
    EXPECT_EQ(t.decode_tokens + static_cast<std::int64_t>(prompts.size()), tokens) << "the first token of each is its prefill's";
    EXPECT_GT(t.decode_s, 0.0);
    EXPECT_GT(t.prefill_s, 0.0);
  }
  // Sampling follows the seed.
  GpuDecoder dec(model, {.max_batch = 4});
  const SampleOptions hot{.temperature = 1.0, .top_p = 1.0};
  const auto a = dec.generate(prompts, max_new, hot, -1, 1), b = dec.generate(prompts, max_new, hot, -1, 1);
  const auto d = dec.generate(prompts, max_new, hot, -1, 2);
  int same = 0;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(a[i].tokens, b[i].tokens);
    same += a[i].tokens == d[i].tokens;
  }
  EXPECT_LT(same, static_cast<int>(prompts.size())) << "another seed draws other tokens";
}

TEST(GpuDecoder, StopsAtEndOfTextMaxNewTokensAndTheContext) {
  SLM_REQUIRE_GPU();
  const ModelConfig c = config_a();
  Model model = random_model(c, 6);
  const SampleOptions greedy{.temperature = 0.0, .top_p = 1.0};
  GpuDecoder dec(model, {.max_batch = 2});
  const std::vector<std::int32_t> p = random_tokens(6, c.vocab_size, 7);
  const GenerateResult full = dec.generate({p}, 12, greedy, -1, 0)[0];
  ASSERT_EQ(full.tokens.size(), 12u);
  EXPECT_EQ(full.stop, StopReason::max_new_tokens);
  // max new tokens 0 and 1
  EXPECT_TRUE(dec.generate({p}, 0, greedy, -1, 0)[0].tokens.empty());
  EXPECT_EQ(dec.generate({p}, 0, greedy, -1, 0)[0].stop, StopReason::max_new_tokens);
  EXPECT_EQ(dec.generate({p}, 1, greedy, -1, 0)[0].tokens, std::vector<std::int32_t>{full.tokens[0]});
  // end of text: stop at the first occurrence of the stop id, which is not emitted
  const std::int32_t stop = full.tokens[5];
  const auto first = std::find(full.tokens.begin(), full.tokens.end(), stop) - full.tokens.begin();
  const GenerateResult eot = dec.generate({p}, 12, greedy, stop, 0)[0];
  EXPECT_EQ(eot.tokens, std::vector<std::int32_t>(full.tokens.begin(), full.tokens.begin() + first));
  EXPECT_EQ(eot.stop, StopReason::end_of_text);
  // the context: a prompt of context − 3 tokens gets 4 (the last fills the context); a full one gets 1
  for (std::int64_t len : {c.context_length - 3, c.context_length}) {
    const std::vector<std::int32_t> q = random_tokens(len, c.vocab_size, 8);
    const GenerateResult r = dec.generate({q}, 100, greedy, -1, 0)[0];
    Rng rng(0);
    const GenerateResult cpu = generate(model, q, 100, greedy, -1, rng);
    EXPECT_EQ(r.tokens.size(), static_cast<std::size_t>(c.context_length - len + 1));
    EXPECT_EQ(r.tokens.size(), cpu.tokens.size());
    EXPECT_EQ(r.stop, StopReason::context_length);
    EXPECT_EQ(cpu.stop, StopReason::context_length);
  }
  // a cache shorter than the context bounds the sequence like a shorter context
  GpuDecoder short_cache(model, {.max_batch = 1, .max_length = 20});
  const GenerateResult s = short_cache.generate({random_tokens(18, c.vocab_size, 9)}, 100, greedy, -1, 0)[0];
  EXPECT_EQ(s.tokens.size(), 3u);
  EXPECT_EQ(s.stop, StopReason::context_length);
}

TEST(GpuDecoder, RefusesWhatItCannotRunWithAClearError) {
  SLM_REQUIRE_GPU();
  const ModelConfig c = config_a();
  Model model = random_model(c, 7);
  auto error_of = [](auto&& f) -> std::string {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  GpuDecoder dec(model, {.max_batch = 1, .max_length = 20});
  const SampleOptions greedy{.temperature = 0.0, .top_p = 1.0};
  EXPECT_NE(error_of([&] { dec.generate({{}}, 5, greedy, -1, 0); }).find("empty"), std::string::npos);
  EXPECT_NE(error_of([&] { dec.generate({random_tokens(41, c.vocab_size, 1)}, 5, greedy, -1, 0); }).find("context length"),
            std::string::npos);
  EXPECT_NE(error_of([&] { dec.generate({random_tokens(21, c.vocab_size, 1)}, 5, greedy, -1, 0); }).find("cache"),
            std::string::npos);
  EXPECT_NE(error_of([&] { dec.generate({{1, 300}}, 5, greedy, -1, 0); }).find("vocabulary"), std::string::npos);
  EXPECT_NE(error_of([&] { dec.generate({{1}}, 5, {.temperature = 1.0, .top_p = 0.0}, -1, 0); }).find("top_p"),
            std::string::npos);
  EXPECT_NE(error_of([&] { GpuDecoder big(model, {.max_batch = 33}); }).find("at most 32"), std::string::npos);
  ModelConfig qk = c;
  qk.qk_norm = true;
  Model qk_model = random_model(qk, 1);
  EXPECT_NE(error_of([&] { GpuDecoder d(qk_model, {}); }).find("qk_norm"), std::string::npos);
  Model odd = random_model(model_shape(64, 16, 36, 1, 3, 48), 1);   // d_model 36: rows of 72 bytes
  EXPECT_NE(error_of([&] { GpuDecoder d(odd, {}); }).find("d_model"), std::string::npos);
}

}  // namespace
}  // namespace scratchlm

#endif  // SCRATCHLM_CUDA
