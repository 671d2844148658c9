// Resource accounting: the formulas behind accounting.h, and its table and JSON renderings.
// Every count is a closed-form expression in (V, T, C, L, H, Hkv, D, F, W, B); integer counts are computed with
// overflow checks, FLOPs in double (exact below 2^53 ≈ 9·10^15, far above one GPT-2 XL sequence).
#include "model/accounting.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "util/error.h"

namespace scratchlm {
namespace {

// Integer arithmetic that refuses to overflow (a config file can ask for any shape).
std::int64_t mul(std::int64_t a, std::int64_t b) {
  std::int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) fail("accounting: the model is too large to count in 64-bit integers");
  return r;
}
std::int64_t add(std::int64_t a, std::int64_t b) {
  std::int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) fail("accounting: the model is too large to count in 64-bit integers");
  return r;
}

// Layers with full and with windowed attention.
std::int64_t full_layers(const ModelConfig& c) {
  std::int64_t n = 0;
  for (std::int64_t l = 0; l < c.num_layers; ++l) n += c.full_attention_layer(l);
  return n;
}

// The number of norms (ln1, ln2, the double norms) of a layer, and each one's parameters.
std::int64_t norms_in_layer(const ModelConfig& c) {
  if (!c.has_norms()) return 0;
  return (c.parallel_block ? 1 : 2) + (c.norm_placement == NormPlacement::pre_and_post ? 2 : 0);
}
std::int64_t params_per_norm(const ModelConfig& c) {
  return c.has_norms() ? (c.norm_has_bias() ? 2 : 1) * c.d_model : 0;
}

// One feed-forward of width f: w1, w2 (and w3 when gated), with their biases.
std::int64_t ffn_params(const ModelConfig& c, std::int64_t f) {
  const std::int64_t C = c.d_model, matrices = c.gated() ? 3 : 2;
  const std::int64_t biases = c.bias ? add(mul(matrices - 1, f), C) : 0;   // b1 (and b3) of f, b2 of C
  return add(mul(matrices, mul(C, f)), biases);
}

ParamCounts count_params(const ModelConfig& c) {
  const std::int64_t V = c.vocab_size, C = c.d_model, L = c.num_layers, F = c.d_ff;
  ParamCounts p;
  p.embedding = mul(V, C);
  p.position_embedding = c.position == Position::learned ? mul(c.context_length, C) : 0;
  // q, output (Q·C each); k, v (K·C each); with "bias" the biases q (Q), k, v (K each), output (C)
  const std::int64_t Q = c.q_width(), K = c.kv_width();
  p.attention_per_layer = add(mul(2 * C, add(Q, K)), c.bias ? add(add(Q, mul(2, K)), C) : 0);
  p.norms_per_layer = add(mul(norms_in_layer(c), params_per_norm(c)), c.qk_norm ? 2 * c.d_head() : 0);   // (+ q_norm, k_norm)
  if (c.is_moe()) {
    const MoeConfig& m = c.moe;
    p.router_per_layer = mul(m.num_experts, C);
    p.per_expert = ffn_params(c, m.d_ff_expert);
    p.ffn_per_layer = add(p.router_per_layer, mul(add(m.num_experts, m.num_shared), p.per_expert));
    p.ffn_active_per_layer = add(p.router_per_layer, mul(add(m.top_k, m.num_shared), p.per_expert));
  } else {
    p.ffn_per_layer = ffn_params(c, F);
    p.ffn_active_per_layer = p.ffn_per_layer;
  }
  p.final_norm = params_per_norm(c);
  p.lm_head = c.tie_embeddings ? 0 : mul(V, C);   // tied: the embedding is the head
  const std::int64_t per_layer = add(add(p.attention_per_layer, p.norms_per_layer), p.ffn_per_layer);
  p.total = add(add(add(add(p.embedding, p.position_embedding), mul(L, per_layer)), p.final_norm), p.lm_head);
  p.non_embedding = p.total - p.embedding - p.position_embedding;
  p.active = p.total - mul(L, p.ffn_per_layer - p.ffn_active_per_layer);
  return p;
}

// The forward pass's matrix products for one sequence of T tokens, in model order. A Linear with
// weight (d_out, d_in) applied to (T, d_in) is a (T, d_in)·(d_in, d_out) product: 2·T·d_in·d_out.
// Attention per query head: scores (T, D)·(D, keys) and mix (T, keys)·(keys, D), 2·T·keys·D each,
// × H heads = 2·T·keys·Q, with keys = T in a full layer (unmasked) and min(W, T) in a windowed one.
// (Grouped-query heads share keys, not products: Hkv changes only the k and v projections.)
// Formulas name Q and K as C where they equal it (the CS336 shape), else as H·D and Hkv·D.
// A mixture of experts: the router (T, C)·(C, E), then per token k routed and S shared experts.
std::vector<MatmulFlops> forward_matmuls(const ModelConfig& c, std::int64_t seq_len) {
  const double V = static_cast<double>(c.vocab_size), T = static_cast<double>(seq_len),
               C = static_cast<double>(c.d_model), L = static_cast<double>(c.num_layers),
               F = static_cast<double>(c.d_ff), Q = static_cast<double>(c.q_width()),
               K = static_cast<double>(c.kv_width()), L_full = static_cast<double>(full_layers(c)),
               L_win = L - L_full, keys_win = static_cast<double>(std::min(c.attention_window, seq_len));
  const std::string q = c.q_width() == c.d_model ? "C" : "H·D", k = c.kv_width() == c.d_model ? "C" : "Hkv·D";
  const std::string l_full = L_win > 0 ? "L_full" : "L";
  std::vector<MatmulFlops> terms = {
      {"q_proj", "2·T·C·" + q + "·L", 2 * T * C * Q * L},
      {"k_proj", "2·T·C·" + k + "·L", 2 * T * C * K * L},
      {"v_proj", "2·T·C·" + k + "·L", 2 * T * C * K * L},
  };
  if (L_full > 0) {
    terms.push_back({"scores Q·K^T", "2·T·T·" + q + "·" + l_full, 2 * T * T * Q * L_full});
    terms.push_back({"mix P·V", "2·T·T·" + q + "·" + l_full, 2 * T * T * Q * L_full});
  }
  if (L_win > 0) {
    terms.push_back({"scores Q·K^T, window", "2·T·min(W,T)·" + q + "·L_win", 2 * T * keys_win * Q * L_win});
    terms.push_back({"mix P·V, window", "2·T·min(W,T)·" + q + "·L_win", 2 * T * keys_win * Q * L_win});
  }
  terms.push_back({"output_proj", "2·T·" + q + "·C·L", 2 * T * Q * C * L});
  if (c.is_moe()) {
    const double E = static_cast<double>(c.moe.num_experts), k = static_cast<double>(c.moe.top_k),
                 S = static_cast<double>(c.moe.num_shared), Fe = static_cast<double>(c.moe.d_ff_expert);
    terms.push_back({"router", "2·T·C·E·L", 2 * T * C * E * L});
    for (const char* w : {"w1", "w3", "w2"}) {
      if (std::string(w) == "w3" && !c.gated()) continue;
      terms.push_back({str("experts ", w, " (k of E)"), "2·T·k·C·Fe·L", 2 * T * k * C * Fe * L});
      if (S > 0) terms.push_back({str("shared experts ", w), "2·T·S·C·Fe·L", 2 * T * S * C * Fe * L});
    }
  } else {
    terms.push_back({"ffn w1", "2·T·C·F·L", 2 * T * C * F * L});
    if (c.gated()) terms.push_back({"ffn w3", "2·T·C·F·L", 2 * T * C * F * L});
    terms.push_back({"ffn w2", "2·T·F·C·L", 2 * T * F * C * L});
  }
  terms.push_back({"lm_head", "2·T·C·V", 2 * T * C * V});
  return terms;
}

double sum_flops(const std::vector<MatmulFlops>& terms) {
  double s = 0;
  for (const MatmulFlops& m : terms) s += m.per_sequence;
  return s;
}

// Rough forward FLOPs outside the matmuls, per token (exp, divide and rsqrt counted as one FLOP):
//   per layer: each norm 4C (RMSNorm: square-accumulate, scale by rstd and gain) or 6C (LayerNorm:
//              also the mean and the bias), RoPE on q and k 3·(Q + K) (4 multiplies + 2 adds per
//              pair), softmax over the keys per head 5·H·keys (scale, max, subtract, exp, sum, divide
//              ≈ 5; keys = T, or min(W, T) in a windowed layer), the gate 5 a hidden unit (silu(a)·b),
//              residual adds 2C, one add a bias value; a mixture of experts: the router's softmax 5E,
//              the top-k search k·E, the weighted scatter 2kC
//   final:     the final norm, cross-entropy 4V (max, subtract, exp, sum)
double non_matmul_per_sequence(const ModelConfig& c, std::int64_t seq_len) {
  const double V = static_cast<double>(c.vocab_size), T = static_cast<double>(seq_len),
               C = static_cast<double>(c.d_model), H = static_cast<double>(c.num_heads),
               F = static_cast<double>(c.d_ff), Q = static_cast<double>(c.q_width()),
               K = static_cast<double>(c.kv_width());
  const double norm = c.norm == Norm::layernorm ? 6 * C : c.norm == Norm::rmsnorm ? 4 * C : 0;
  const double biases = c.bias ? Q + 2 * K + C : 0;   // the attention's; the feed-forward's below
  double ffn = 5 * F + (c.bias ? (c.gated() ? 2 : 1) * F + C : 0);
  if (c.is_moe()) {
    const double E = static_cast<double>(c.moe.num_experts), k = static_cast<double>(c.moe.top_k),
                 S = static_cast<double>(c.moe.num_shared), Fe = static_cast<double>(c.moe.d_ff_expert);
    ffn = 5 * E + k * E + 2 * k * C + (k + S) * (5 * Fe + (c.bias ? (c.gated() ? 2 : 1) * Fe + C : 0));
  }
  double layers = 0;
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    const double keys = c.full_attention_layer(l) ? T : static_cast<double>(std::min(c.attention_window, seq_len));
    layers += static_cast<double>(norms_in_layer(c)) * norm + (c.layer_rope(l) ? 3 * (Q + K) : 0) + 5 * H * keys + ffn +
              2 * C + biases;
  }
  return T * (layers + norm + 4 * V);
}

// A count of values per token, kept both as a number and as a formula in the dimension letters
// ("8C + 2 + H + 3F"), so that the report shows the formula of the config at hand.
class Count {
 public:
  // coef · symbol, where symbol stands for `value` ("" for a constant 1).
  void add(std::int64_t coef, const std::string& symbol, std::int64_t value) {
    value_ = scratchlm::add(value_, mul(coef, value));
    for (auto& [s, k] : terms_)
      if (s == symbol) {
        k += coef;
        return;
      }
    terms_.emplace_back(symbol, coef);
  }
  std::int64_t value() const { return value_; }
  std::string formula() const {
    std::string out;
    for (const auto& [s, k] : terms_) {
      if (k == 0) continue;
      if (!out.empty()) out += " + ";
      if (s.empty()) out += std::to_string(k);
      else out += k == 1 ? s : s.size() == 1 ? std::to_string(k) + s : std::to_string(k) + "·" + s;
    }
    return out.empty() ? "0" : out;
  }

 private:
  std::vector<std::pair<std::string, std::int64_t>> terms_;
  std::int64_t value_ = 0;
};

// The CPU path's plan (Activations in model.h, allocated with backward), in bytes for N tokens: the
// same buffers, in the same conditions, as its constructor.
MemoryPlan memory_plan(const ModelConfig& c, const ParamCounts& p, std::int64_t N) {
  const std::int64_t V = c.vocab_size, C = c.d_model, L = c.num_layers, H = c.num_heads, Hkv = c.kv_heads(),
                     F = c.d_ff, Q = c.q_width(), K = c.kv_width();
  const std::int64_t E = c.moe.num_experts, k = c.moe.top_k, S = c.moe.num_shared, Fe = c.moe.d_ff_expert;
  const bool layernorm = c.norm == Norm::layernorm, norms = c.has_norms();
  const bool post = c.norm_placement == NormPlacement::post, dbl = c.norm_placement == NormPlacement::pre_and_post;
  const bool pre_norms = norms && !post;
  constexpr std::int64_t f32 = 4;
  // The formulas name Q = H·D and K = Hkv·D as C where they equal it (the CS336 shape).
  const std::string q_sym = Q == C ? "C" : "Q", k_sym = K == C ? "C" : "K";
  MemoryPlan m;
  m.parameters = mul(f32, p.total);
  m.gradients = mul(f32, p.total);
  m.adamw_state = mul(2 * f32, p.total);
  // Per layer, per token: x_in, x_mid (2C); q, attn (2Q); k, v (2K); ln1, ln2 (C each, pre and
  // double placements); rstd1, rstd2 (and LayerNorm's mean1, mean2); lse (H); the feed-forward's a,
  // b, h (3F; 2F without a gate), or the MoE's buffers.
  Count layer;
  layer.add(2, "C", C);
  layer.add(2, q_sym, Q);
  layer.add(2, k_sym, K);
  const std::int64_t serial_norms = norms ? (c.parallel_block ? 1 : 2) : 0;   // ln1 (and ln2)
  if (pre_norms) layer.add(serial_norms, "C", C);                             // their outputs
  layer.add(serial_norms * (layernorm ? 2 : 1), "", 1);                        // rstd (and mean)
  if (post || dbl) layer.add(2, "C", C);                                      // attn_out, ffn_out
  if (dbl) layer.add(layernorm ? 4 : 2, "", 1);                               // rstd_pa, rstd_pf (and means)
  layer.add(1, "H", H);                                                       // lse
  if (c.qk_norm) {                                                            // q_raw, k_raw; rstd_q, rstd_k
    layer.add(1, q_sym, Q);
    layer.add(1, k_sym, K);
    layer.add(1, "H", H);
    layer.add(1, Hkv == H ? "H" : "Hkv", Hkv);
  }
  const std::int64_t hidden = c.gated() ? 3 : 2;
  if (c.is_moe()) {   // router_probs (E), moe_weight (k), moe_out (k·C), a, b, h of the k and S experts
    layer.add(1, "E", E);
    layer.add(1, "k", k);
    layer.add(1, "k·C", mul(k, C));
    layer.add(hidden, "k·Fe", mul(k, Fe));
    if (S > 0) layer.add(hidden, "S·Fe", mul(S, Fe));
  } else {
    layer.add(hidden, "F", F);
  }
  // int32 routing indices per token (moe_expert, moe_row, moe_assignment: 3k) and int64 counts per
  // layer (moe_offset E + 1, expert_tokens E)
  const std::int64_t routing_bytes = c.is_moe() ? add(mul(f32, mul(N, 3 * k)), mul(8, 2 * E + 1)) : 0;
  m.act_layers = mul(add(mul(f32, mul(N, layer.value())), routing_bytes), L);
  m.act_layers_formula = str("4·N·(", layer.formula(), ")·L", c.is_moe() ? " + (4·N·3k + 8·(2E + 1))·L" : "");
  // Per token: x_final (C); ln_final (C), rstd_final (and mean_final) with norms; losses, ce_lse (2).
  Count final;
  final.add(1, "C", C);
  if (norms) {
    final.add(1, "C", C);
    final.add(layernorm ? 2 : 1, "", 1);
  }
  final.add(2, "", 1);
  m.act_final = mul(f32, mul(N, final.value()));
  m.act_final_formula = str("4·N·(", final.formula(), ")");
  m.act_logits = mul(f32, mul(N, V));
  // Backward scratch per token: dx (C), dbuf (max(C, Q)), dq (Q), dk, dv (2K); dqk_raw (Q),
  // dln_ffn, ddrop, dsub (C each) as the variant needs them; dh, da, db (3 of F, or of Fe with MoE;
  // 2 without a gate); MoE: moe_dx (C), moe_dr (E).
  Count backward;
  backward.add(1, "C", C);
  backward.add(1, Q == C ? "C" : "max(C,Q)", std::max(C, Q));
  backward.add(1, q_sym, Q);
  backward.add(2, k_sym, K);
  if (c.qk_norm) backward.add(1, q_sym, Q);
  if (c.parallel_block) backward.add(1, "C", C);
  if (c.dropout > 0) backward.add(1, "C", C);
  if (post || dbl) backward.add(1, "C", C);
  if (c.is_moe()) {
    backward.add(hidden, "Fe", Fe);
    backward.add(1, "C", C);
    backward.add(1, "E", E);
  } else {
    backward.add(hidden, "F", F);
  }
  m.act_backward = mul(f32, mul(N, backward.value()));
  m.act_backward_formula = str("4·N·(", backward.formula(), ")");
  m.act_moe_scratch = c.is_moe() ? mul(f32, mul(N, 2 * C)) : 0;   // moe_in, moe_tmp
  m.activations = add(add(add(add(m.act_layers, m.act_final), m.act_logits), m.act_backward), m.act_moe_scratch);
  m.total = add(add(add(m.parameters, m.gradients), m.adamw_state), m.activations);
  return m;
}

// K keys and K values per cached position and layer (KvCache in model.h).
KvCacheBytes kv_cache_bytes(const ModelConfig& c) {
  const std::int64_t L_full = full_layers(c), L_win = c.num_layers - L_full, ctx = c.context_length;
  const std::int64_t per_position = mul(2, c.kv_width());   // floats, one layer
  const std::int64_t window_rows = std::min(c.attention_window, ctx);
  KvCacheBytes k;
  k.per_token_fp32 = mul(4, mul(per_position, c.num_layers));
  k.per_token_full_fp32 = mul(4, mul(per_position, L_full));
  k.sequence_fp32 = mul(4, mul(per_position, add(mul(L_full, ctx), mul(L_win, window_rows))));
  k.per_token_bf16 = k.per_token_fp32 / 2;
  k.per_token_full_bf16 = k.per_token_full_fp32 / 2;
  k.sequence_bf16 = k.sequence_fp32 / 2;
  return k;
}

// ---- formatting ----

std::string commas(std::int64_t v) {
  std::string digits = std::to_string(v < 0 ? -v : v), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return v < 0 ? "-" + out : out;
}

// Exact with separators while a double holds the integer exactly, else scientific.
std::string commas(double v) {
  if (std::fabs(v) < 9.0e15 && v == std::floor(v)) return commas(static_cast<std::int64_t>(v));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4e", v);
  return buf;
}

// 4.513 TFLOPs, 20.97 GFLOPs, ...: three decimals in the largest unit that keeps the value ≥ 1.
std::string flops(double v) {
  static const char* units[] = {"", "k", "M", "G", "T", "P", "E"};
  int u = 0;
  while (u < 6 && std::fabs(v) >= 1000.0) {
    v /= 1000.0;
    ++u;
  }
  char buf[48];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %sFLOPs" : "%.3f %sFLOPs", v, units[u]);
  return buf;
}

std::string gigabytes(std::int64_t bytes) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.3f GB", static_cast<double>(bytes) / 1e9);
  return buf;
}

std::string percent(double part, double whole) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f%%", whole > 0 ? 100.0 * part / whole : 0.0);
  return buf;
}

// Rows of cells rendered with columns padded to the widest cell: the first two columns
// left-aligned (names, formulas), the rest right-aligned (numbers). Rows may be short.
using Rows = std::vector<std::vector<std::string>>;

// Display width: UTF-8 continuation bytes take no column (the formulas use "·", "²", "−").
std::size_t width(const std::string& s) {
  std::size_t w = 0;
  for (unsigned char ch : s) w += (ch & 0xC0) != 0x80;
  return w;
}

std::string render(const Rows& rows) {
  std::vector<std::size_t> widths;
  for (const auto& row : rows)
    for (std::size_t i = 0; i < row.size(); ++i) {
      if (widths.size() <= i) widths.push_back(0);
      widths[i] = std::max(widths[i], width(row[i]));
    }
  std::string out;
  for (const auto& row : rows) {
    std::string line = "  ";
    for (std::size_t i = 0; i < row.size(); ++i) {
      const std::string pad(widths[i] - width(row[i]), ' ');
      line += i < 2 ? row[i] + pad : pad + row[i];
      if (i + 1 < row.size()) line += "   ";
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  return out;
}

// FLOPs in JSON: an integer while it is exact, else a double.
nlohmann::ordered_json json_flops(double v) {
  if (std::fabs(v) < 9.0e15 && v == std::floor(v)) return static_cast<std::int64_t>(v);
  return v;
}

}  // namespace

Accounting compute_accounting(const ModelConfig& c, std::int64_t batch, std::int64_t seq_len) {
  if (batch <= 0) fail("accounting: the batch size must be positive, got ", batch);
  if (seq_len <= 0) fail("accounting: the sequence length must be positive, got ", seq_len);
  if (seq_len > c.context_length)
    fail("accounting: the sequence length (", seq_len, ") exceeds the model's context_length (", c.context_length,
         ")");
  Accounting a;
  a.config = c;
  a.batch = batch;
  a.seq_len = seq_len;
  a.params = count_params(c);
  a.forward = forward_matmuls(c, seq_len);
  const double T = static_cast<double>(seq_len);
  a.forward_per_sequence = sum_flops(a.forward);
  a.forward_per_token = a.forward_per_sequence / T;
  a.backward_per_sequence = 2 * a.forward_per_sequence;
  a.training_per_sequence = 3 * a.forward_per_sequence;
  a.training_per_token = train_flops_per_token(c, seq_len);
  a.training_per_step = static_cast<double>(batch) * a.training_per_sequence;
  a.non_matmul_per_sequence = non_matmul_per_sequence(c, seq_len);
  a.memory = memory_plan(c, a.params, mul(batch, seq_len));
  a.kv_cache = kv_cache_bytes(c);
  return a;
}

double train_flops_per_token(const ModelConfig& c, std::int64_t seq_len) {
  return 3.0 * sum_flops(forward_matmuls(c, seq_len)) / static_cast<double>(seq_len);
}

std::string accounting_table(const Accounting& a) {
  const ModelConfig& c = a.config;
  const ParamCounts& p = a.params;
  const MemoryPlan& m = a.memory;
  const double P = static_cast<double>(p.total);
  std::string out;
  const std::int64_t L_full = full_layers(c), L_win = c.num_layers - L_full;
  out += str("model: V = vocab_size ", commas(c.vocab_size), ", C = d_model ", commas(c.d_model), ", L = num_layers ",
             c.num_layers, ", H = num_heads ", c.num_heads, ", Hkv = num_kv_heads ", c.kv_heads(), ", D = head size ",
             c.d_head(), " (Q = H·D = ", commas(c.q_width()), ", K = Hkv·D = ", commas(c.kv_width()), "), F = d_ff ",
             commas(c.d_ff), ", context_length ", commas(c.context_length), "\n");
  out += L_win == 0 ? std::string("attention: full causal in every layer\n")
                    : str("attention: window W = ", c.attention_window, " in L_win = ", L_win, " layers, full causal in L_full = ",
                          L_full, c.full_attention_every ? str(" (every ", c.full_attention_every, ")") : "", "\n");
  if (c.is_moe())
    out += str("mixture of experts: E = num_experts ", c.moe.num_experts, ", k = top_k ", c.moe.top_k,
               ", S = num_shared ", c.moe.num_shared, ", Fe = d_ff_expert ", commas(c.moe.d_ff_expert),
               c.moe.capacity_factor > 0 ? " (FLOPs dropless: an upper bound with the capacity)" : "", "\n");
  out += str("accounted at: batch B = ", commas(a.batch), ", sequence length T = ", commas(a.seq_len),
             ", N = B·T = ", commas(a.batch * a.seq_len), " tokens\n\n");

  out += "Parameters\n";
  const std::int64_t L = c.num_layers;
  // The formulas of the config at hand: a norm is C (2·C with LayerNorm's bias); "+ b" the biases.
  const std::string norm_size = c.norm_has_bias() ? "2·C" : "C";
  const std::string ffn_kind =
      c.gated() ? str(ffn_name(c.ffn), " w1, w2, w3") : str("mlp (", activation_name(c.activation), ") w1, w2");
  auto ffn_formula = [&](const char* width) {
    return str(c.gated() ? "3·C·" : "2·C·", width, c.bias ? str(" + ", c.gated() ? "2·" : "", width, " + C") : "");
  };
  Rows rows = {
      {"component", "formula", "per layer", "total", "share"},
      {"token embedding", "V·C", "-", commas(p.embedding), percent(p.embedding, P)},
  };
  if (p.position_embedding > 0)
    rows.push_back({"position embedding (learned)", "context_length·C", "-", commas(p.position_embedding),
                    percent(p.position_embedding, P)});
  const bool square = c.q_width() == c.d_model && c.kv_width() == c.d_model;   // Q = K = C
  rows.push_back({str("attention q, k, v, output", c.bias ? " (+ biases)" : ""),
                  square ? (c.bias ? "(4·C² + 4·C)·L" : "4·C²·L")
                         : (c.bias ? "(2·C·Q + 2·C·K + Q + 2·K + C)·L" : "(2·C·Q + 2·C·K)·L"),
                  commas(p.attention_per_layer), commas(L * p.attention_per_layer), percent(L * p.attention_per_layer, P)});
  if (p.norms_per_layer > 0) {
    std::string names = str(norm_name(c.norm), " ln1", c.parallel_block ? "" : ", ln2",
                            c.norm_placement == NormPlacement::pre_and_post ? ", post_attn_norm, post_ffn_norm" : "");
    if (!c.has_norms()) names = "";
    if (c.qk_norm) names += names.empty() ? "q_norm, k_norm" : ", q_norm, k_norm";
    const std::string count = str(norms_in_layer(c));
    rows.push_back({str("norms ", names),
                    str("(", c.has_norms() ? (count == "1" ? norm_size : count + "·" + norm_size) : "0",
                        c.qk_norm ? " + 2·D" : "", ")·L"),
                    commas(p.norms_per_layer), commas(L * p.norms_per_layer), percent(L * p.norms_per_layer, P)});
  }
  if (c.is_moe()) {
    const std::int64_t experts = c.moe.num_experts + c.moe.num_shared;
    rows.push_back({"router", "E·C·L", commas(p.router_per_layer), commas(L * p.router_per_layer),
                    percent(L * p.router_per_layer, P)});
    rows.push_back({str(experts, c.moe.num_shared > 0 ? str(" experts (", c.moe.num_shared, " shared), ") : " experts, ",
                        ffn_kind),
                    str("(E + S)·(", ffn_formula("Fe"), ")·L"), commas(experts * p.per_expert),
                    commas(L * experts * p.per_expert), percent(L * experts * p.per_expert, P)});
  } else {
    rows.push_back({str(ffn_kind, c.bias ? " (+ biases)" : ""), str("(", ffn_formula("F"), ")·L"),
                    commas(p.ffn_per_layer), commas(L * p.ffn_per_layer), percent(L * p.ffn_per_layer, P)});
  }
  rows.push_back({"final norm", c.has_norms() ? norm_size : "0 (no norms)", "-", commas(p.final_norm),
                  percent(p.final_norm, P)});
  rows.push_back({c.tie_embeddings ? "lm_head (tied: the embedding)" : "lm_head (untied)", c.tie_embeddings ? "0" : "V·C",
                  "-", commas(p.lm_head), percent(p.lm_head, P)});
  rows.push_back({"total", "", "", commas(p.total), percent(P, P)});
  rows.push_back({"non-embedding", p.position_embedding > 0 ? "total − embeddings" : "total − V·C", "", commas(p.non_embedding), percent(p.non_embedding, P)});
  if (c.is_moe())
    rows.push_back({"active per token", "total − (E − k)·expert·L", "", commas(p.active), percent(p.active, P)});
  out += render(rows);
  out += "  (non-embedding excludes the token and position embeddings; lm_head is counted in it)\n\n";

  out += str("Forward FLOPs, one sequence of T = ", commas(a.seq_len),
             " tokens: matmuls at 2·m·n·k, attention unmasked (full T×T; a window min(W, T) keys per query)\n");
  Rows flop_rows = {{"matmul", "formula", "per sequence", "per token", "share"}};
  for (const MatmulFlops& mm : a.forward)
    flop_rows.push_back({mm.name, mm.formula, flops(mm.per_sequence), flops(mm.per_sequence / a.seq_len),
                         percent(mm.per_sequence, a.forward_per_sequence)});
  flop_rows.push_back({"forward total", "", flops(a.forward_per_sequence), flops(a.forward_per_token), "100.00%"});
  flop_rows.push_back({"backward", "2 × forward", flops(a.backward_per_sequence), flops(2 * a.forward_per_token)});
  flop_rows.push_back({"training", "3 × forward", flops(a.training_per_sequence), flops(a.training_per_token)});
  flop_rows.push_back({str("training step, B = ", commas(a.batch)), "3 × forward × B", flops(a.training_per_step)});
  out += render(flop_rows);
  out += str("  forward total exactly ", commas(a.forward_per_sequence), " FLOPs per sequence\n");
  out += str("  non-matmul ops (norms, RoPE, softmax, gates, biases, routing, residual adds, cross-entropy), counted\n  roughly: ",
             flops(a.non_matmul_per_sequence), " per sequence = ",
             percent(a.non_matmul_per_sequence, a.forward_per_sequence),
             " of the forward matmuls; negligible, not included above\n\n");

  out += str("Memory, fp32, B = ", commas(a.batch), ", T = ", commas(a.seq_len),
             "; activations are the CPU path's plan (the buffers of Activations in model.h)\n");
  out += render({
      {"item", "formula (bytes)", "bytes", "size"},
      {"parameters", "4·P", commas(m.parameters), gigabytes(m.parameters)},
      {"gradients", "4·P", commas(m.gradients), gigabytes(m.gradients)},
      {"AdamW state m, v", "8·P", commas(m.adamw_state), gigabytes(m.adamw_state)},
      {"activations, per layer", m.act_layers_formula, commas(m.act_layers), gigabytes(m.act_layers)},
      {"activations, final", m.act_final_formula, commas(m.act_final), gigabytes(m.act_final)},
      {"logits", "4·N·V", commas(m.act_logits), gigabytes(m.act_logits)},
      {"backward scratch", m.act_backward_formula, commas(m.act_backward), gigabytes(m.act_backward)},
      {"activations total", c.is_moe() ? str("(+ MoE forward scratch 4·N·2C = ", commas(m.act_moe_scratch), ")") : "",
       commas(m.activations), gigabytes(m.activations)},
      {"training total", "", commas(m.total), gigabytes(m.total)},
  });
  out += "  per layer: x_in, ln1, x_mid, ln2 (4C), q, attn (2Q), k, v (2K), rstd1, rstd2 (2), lse (H), a, b, h (3F)\n"
         "  per token in the CS336 model (the variants' buffers: model.h); final: x_final, ln_final (2C), rstd_final,\n"
         "  losses, ce_lse (3); backward scratch: dx, dbuf, dq, dk, dv (C + max(C, Q) + Q + 2K), dh, da, db (3F).\n"
         "  Per-thread temporaries inside ops are not counted.\n\n";
  const KvCacheBytes& kv = a.kv_cache;
  out += "KV cache (generation): keys and values, K per position and layer; a windowed layer keeps W positions\n";
  Rows kv_rows = {{"item", "formula (bytes, fp32)", "fp32", "bf16"},
                  {"per token", "2·K·L·4", commas(kv.per_token_fp32), commas(kv.per_token_bf16)}};
  if (L_win > 0)
    kv_rows.push_back({"per token past the window", "2·K·L_full·4", commas(kv.per_token_full_fp32),
                       commas(kv.per_token_full_bf16)});
  kv_rows.push_back({"one context-length sequence", L_win > 0 ? "2·K·(L_full·ctx + L_win·W)·4" : "2·K·L·ctx·4",
                     commas(kv.sequence_fp32), commas(kv.sequence_bf16)});
  out += render(kv_rows);
  return out;
}

nlohmann::ordered_json to_json(const Accounting& a) {
  using ojson = nlohmann::ordered_json;
  const ParamCounts& p = a.params;
  const MemoryPlan& m = a.memory;
  ojson forward = ojson::object();
  for (const MatmulFlops& mm : a.forward) forward[mm.name] = json_flops(mm.per_sequence);
  forward["total"] = json_flops(a.forward_per_sequence);
  ojson j = {
      {"config", to_json(a.config)},
      {"batch", a.batch},
      {"seq_len", a.seq_len},
      {"tokens", a.batch * a.seq_len},
      {"parameters",
       {{"embedding", p.embedding},
        {"position_embedding", p.position_embedding},
        {"attention_per_layer", p.attention_per_layer},
        {"norms_per_layer", p.norms_per_layer},
        {"ffn_per_layer", p.ffn_per_layer},
        {"final_norm", p.final_norm},
        {"lm_head", p.lm_head},
        {"total", p.total},
        {"non_embedding", p.non_embedding},
        {"non_embedding_convention", "excludes the token and position embeddings; lm_head is counted"}}},
      {"flops",
       {{"convention", "matmuls only, 2*m*n*k; attention unmasked (full T x T; windowed layers min(W, T) keys per "
                       "query, unmasked within the band); backward = 2 x forward"},
        {"forward_per_sequence", forward},
        {"forward_per_token", a.forward_per_token},
        {"backward_per_sequence", json_flops(a.backward_per_sequence)},
        {"training_per_sequence", json_flops(a.training_per_sequence)},
        {"training_per_token", a.training_per_token},
        {"training_per_step", json_flops(a.training_per_step)},
        {"non_matmul_per_sequence_rough", a.non_matmul_per_sequence}}},
      {"memory_bytes",
       {{"dtype", "fp32"},
        {"activation_plan", "CPU path (Activations in model.h, with backward buffers)"},
        {"parameters", m.parameters},
        {"gradients", m.gradients},
        {"adamw_state", m.adamw_state},
        {"activations",
         {{"per_layer_saved", m.act_layers},
          {"final", m.act_final},
          {"logits", m.act_logits},
          {"backward_scratch", m.act_backward},
          {"total", m.activations}}},
        {"total", m.total}}},
      {"kv_cache_bytes",
       {{"num_kv_heads", a.config.kv_heads()},
        {"head_dim", a.config.d_head()},
        {"full_layers", full_layers(a.config)},
        {"windowed_layers", a.config.num_layers - full_layers(a.config)},
        {"per_token", {{"fp32", a.kv_cache.per_token_fp32}, {"bf16", a.kv_cache.per_token_bf16}}},
        {"per_token_past_window", {{"fp32", a.kv_cache.per_token_full_fp32}, {"bf16", a.kv_cache.per_token_full_bf16}}},
        {"context_sequence", {{"fp32", a.kv_cache.sequence_fp32}, {"bf16", a.kv_cache.sequence_bf16}}}}},
  };
  if (a.config.is_moe()) {
    j["parameters"]["router_per_layer"] = p.router_per_layer;
    j["parameters"]["per_expert"] = p.per_expert;
    j["parameters"]["ffn_active_per_layer"] = p.ffn_active_per_layer;
    j["parameters"]["active"] = p.active;
    j["memory_bytes"]["activations"]["moe_forward_scratch"] = m.act_moe_scratch;
  }
  return j;
}

}  // namespace scratchlm
