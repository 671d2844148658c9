// Attention on the CPU: forward takes one (batch, query head) pair per OpenMP iteration, backward
// one (batch, kv head) pair (the query heads of its group add into the same dK and dV); scores go
// to a per-thread scratch buffer, the products through sgemm (single-threaded inside the loop).
//
// Queries go in blocks of rows, and a block's scores are computed only against the band of keys
// its rows can see, keys k_lo .. k_hi − 1:
//   - full causal attention: one block of every query against every key up to the last query's
//     position. Scores of masked keys inside it are computed by the product but never read: each
//     row's softmax runs over its visible keys only.
//   - a window W: blocks of max(W, 16) rows, each against at most block + W − 1 keys, so the work
//     is O(T·W) instead of O(T²); the band's keys outside a row's window are likewise never read.
#include "ops/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/cpu/fast_exp.h"
#include "ops/linear.h"

namespace scratchlm {
namespace {

using i64 = std::int64_t;

// The sizes forward and backward share, and which keys each query sees.
struct Shape {
  i64 B, H, Hkv, group, D, Tq, Tk, Cq, Ckv, kv_stride, offset, W, block, band;
  float scale;
  explicit Shape(const AttentionDims& d)
      : B(d.B), H(d.H), Hkv(d.Hkv ? d.Hkv : d.H), group(H / Hkv), D(d.D), Tq(d.Tq), Tk(d.Tk),
        Cq(H * D),      // row stride of q and out: the heads are interleaved per token
        Ckv(Hkv * D),   // row stride of k and v
        kv_stride(d.kv_batch_stride ? d.kv_batch_stride : Tk * Ckv),
        offset(Tk - Tq),   // the position of query 0
        W(d.window),
        block(W ? std::min(Tq, std::max<i64>(W, 16)) : Tq),
        band(W ? std::min(Tk, block + W - 1) : Tk),
        scale(static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)))) {}
  i64 first_key(i64 i) const { return W ? std::max<i64>(0, offset + i - W + 1) : 0; }   // query i's first visible key
  i64 last_key(i64 i) const { return offset + i; }                                      // and its last (inclusive)
};

// c · tanh(s / c), the same float operations in forward and backward.
inline float cap(float s, float c) { return c * std::tanh(s / c); }

}  // namespace

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const AttentionDims& d) {
  const Shape z(d);
  const float c = d.softcap;
  const bool drop = d.dropout.on();
  const std::uint64_t threshold = d.dropout.threshold();
  const float keep_scale = d.dropout.scale();
#pragma omp parallel
  {
    std::vector<float> s(static_cast<std::size_t>(z.block * z.band));   // (rows, width) scores, then probabilities
#pragma omp for collapse(2) schedule(static)
    for (i64 b = 0; b < z.B; ++b)
      for (i64 h = 0; h < z.H; ++h) {
        const float* qh = q + b * z.Tq * z.Cq + h * z.D;                 // (Tq, D), row stride Cq
        const float* kh = k + b * z.kv_stride + (h / z.group) * z.D;     // (Tk, D), row stride Ckv
        const float* vh = v + b * z.kv_stride + (h / z.group) * z.D;
        float* oh = out + b * z.Tq * z.Cq + h * z.D;
        for (i64 i0 = 0; i0 < z.Tq; i0 += z.block) {
          const i64 rows = std::min(z.block, z.Tq - i0);
          const i64 k_lo = z.first_key(i0), width = z.last_key(i0 + rows - 1) + 1 - k_lo;
          // S = Q Kᵀ · scale over the band
          gemm(s.data(), width, qh + i0 * z.Cq, z.Cq, Transpose::no, kh + k_lo * z.Ckv, z.Ckv, Transpose::yes, rows,
               width, z.D, z.scale, Accumulate::no);
          for (i64 r = 0; r < rows; ++r) {
            const i64 i = i0 + r;
            float* row = s.data() + r * width;
            const i64 first = z.first_key(i) - k_lo, end = z.last_key(i) + 1 - k_lo;   // visible: [first, end)
            if (c > 0)
              for (i64 j = first; j < end; ++j) row[j] = cap(row[j], c);
            float max = row[first];
            for (i64 j = first + 1; j < end; ++j) max = row[j] > max ? row[j] : max;
            double sum = 0.0;
#pragma omp simd reduction(+ : sum)
            for (i64 j = first; j < end; ++j) {
              row[j] = fast_exp(row[j] - max);
              sum += row[j];
            }
            const float inv = static_cast<float>(1.0 / sum);
            for (i64 j = first; j < end; ++j) row[j] *= inv;
            for (i64 j = 0; j < first; ++j) row[j] = 0.0f;       // outside the window
            for (i64 j = end; j < width; ++j) row[j] = 0.0f;     // the causal mask
            lse[(b * z.H + h) * z.Tq + i] = static_cast<float>(max + std::log(sum));
            if (drop) {
              const std::uint64_t base = static_cast<std::uint64_t>(((b * z.H + h) * z.Tq + i) * z.Tk + k_lo);
              for (i64 j = first; j < end; ++j)
                row[j] = dropout_keep(d.dropout.seed, d.dropout.site, base + j, threshold) ? row[j] * keep_scale : 0.0f;
            }
          }
          // out = P V over the band
          gemm(oh + i0 * z.Cq, z.Cq, s.data(), width, Transpose::no, vh + k_lo * z.Ckv, z.Ckv, Transpose::no, rows,
               z.D, width, 1.0f, Accumulate::no);
        }
      }
  }
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, const AttentionDims& d) {
  const Shape z(d);
  const i64 T = z.Tq;
  const float c = d.softcap;
  const bool drop = d.dropout.on();
  const std::uint64_t threshold = d.dropout.threshold();
  const float keep_scale = d.dropout.scale();
#pragma omp parallel
  {
    const auto scratch = static_cast<std::size_t>(z.block * z.band);
    std::vector<float> p(scratch);                   // (rows, width) probabilities, then dS
    std::vector<float> dp(scratch);                  // (rows, width) P̃ for dV, then dP
    std::vector<float> capped(c > 0 ? scratch : 0);  // (rows, width) the capped scores
#pragma omp for collapse(2) schedule(static)
    for (i64 b = 0; b < z.B; ++b)
      for (i64 g = 0; g < z.Hkv; ++g) {
        const i64 kv_base = b * T * z.Ckv + g * z.D;   // (T, D) slices with row stride Ckv
        for (i64 t = 0; t < T; ++t)
          for (i64 e = 0; e < z.D; ++e) dk[kv_base + t * z.Ckv + e] = dv[kv_base + t * z.Ckv + e] = 0.0f;
        for (i64 h = g * z.group; h < (g + 1) * z.group; ++h) {
          const i64 q_base = b * T * z.Cq + h * z.D;   // (T, D) slices with row stride Cq
          const float* lse_h = lse + (b * z.H + h) * T;
          for (i64 i0 = 0; i0 < T; i0 += z.block) {
            const i64 rows = std::min(z.block, T - i0);
            const i64 k_lo = z.first_key(i0), width = z.last_key(i0 + rows - 1) + 1 - k_lo;
            const i64 qb = q_base + i0 * z.Cq, kb = kv_base + k_lo * z.Ckv;   // the block's rows, the band's keys
            // P = exp(S − lse), recomputed from the saved log-sum-exp
            gemm(p.data(), width, q + qb, z.Cq, Transpose::no, k + kb, z.Ckv, Transpose::yes, rows, width, z.D, z.scale,
                 Accumulate::no);
            for (i64 r = 0; r < rows; ++r) {
              const i64 i = i0 + r;
              float* row = p.data() + r * width;
              const i64 first = z.first_key(i) - k_lo, end = z.last_key(i) + 1 - k_lo;
              if (c > 0)
                for (i64 j = first; j < end; ++j) row[j] = capped[r * width + j] = cap(row[j], c);
              const float l = lse_h[i];
              for (i64 j = 0; j < first; ++j) row[j] = 0.0f;
              for (i64 j = first; j < end; ++j) row[j] = fast_exp(row[j] - l);
              for (i64 j = end; j < width; ++j) row[j] = 0.0f;
            }
            // P̃ = P ⊙ mask / (1 − p), the probabilities P·V used; mask(r, j) is regenerated
            auto mask_row = [&](float* row, i64 r) {
              const i64 i = i0 + r;
              const std::uint64_t base = static_cast<std::uint64_t>(((b * z.H + h) * T + i) * T + k_lo);
              for (i64 j = z.first_key(i) - k_lo; j < z.last_key(i) + 1 - k_lo; ++j)
                row[j] = dropout_keep(d.dropout.seed, d.dropout.site, base + j, threshold) ? row[j] * keep_scale : 0.0f;
            };
            const float* p_used = p.data();
            if (drop) {
              std::copy(p.begin(), p.begin() + rows * width, dp.begin());
              for (i64 r = 0; r < rows; ++r) mask_row(dp.data() + r * width, r);
              p_used = dp.data();
            }
            // dV += P̃ᵀ dO
            gemm(dv + kb, z.Ckv, p_used, width, Transpose::yes, dout + qb, z.Cq, Transpose::no, width, z.D, rows, 1.0f,
                 Accumulate::yes);
            // dP = (dO Vᵀ) ⊙ mask / (1 − p)
            gemm(dp.data(), width, dout + qb, z.Cq, Transpose::no, v + kb, z.Ckv, Transpose::yes, rows, width, z.D, 1.0f,
                 Accumulate::no);
            if (drop)
              for (i64 r = 0; r < rows; ++r) mask_row(dp.data() + r * width, r);
            // dS = P ⊙ (dP − Δ), Δ_i = dO_i · O_i; then through the cap
            for (i64 r = 0; r < rows; ++r) {
              const i64 i = i0 + r;
              const float* o_i = out + qb + r * z.Cq;
              const float* do_i = dout + qb + r * z.Cq;
              double delta = 0.0;
              for (i64 e = 0; e < z.D; ++e) delta += static_cast<double>(o_i[e]) * do_i[e];
              float* row = p.data() + r * width;
              const float* dp_row = dp.data() + r * width;
              const i64 first = z.first_key(i) - k_lo, end = z.last_key(i) + 1 - k_lo;
              for (i64 j = first; j < end; ++j) row[j] = row[j] * (dp_row[j] - static_cast<float>(delta));
              if (c > 0)
                for (i64 j = first; j < end; ++j) {
                  const float t = capped[r * width + j] / c;   // tanh(s / c)
                  row[j] *= 1.0f - t * t;
                }
            }
            // dQ = dS K · scale (each query row once);  dK += dSᵀ Q · scale
            gemm(dq + qb, z.Cq, p.data(), width, Transpose::no, k + kb, z.Ckv, Transpose::no, rows, z.D, width, z.scale,
                 Accumulate::no);
            gemm(dk + kb, z.Ckv, p.data(), width, Transpose::yes, q + qb, z.Cq, Transpose::no, width, z.D, rows, z.scale,
                 Accumulate::yes);
          }
        }
      }
  }
}

}  // namespace scratchlm
