// scratchlm_parity: checks the CPU model against PyTorch reference data (float64 in PyTorch,
// stored float32), in the format of ../shared/reference/make_reference.py:
//   scratchlm_parity [REFERENCE_DIR]      (default: tests/data/reference/lm-small)
// It checks the forward pass (embedding, every block's output, final norm, logits, loss), every
// parameter gradient, each op on its own inputs (RMSNorm, RoPE at non-contiguous positions,
// attention, SwiGLU, cross-entropy at large logits) and a 6-step AdamW + clipping + cosine
// trajectory (losses, gradient norms, learning rates, final weights). Error of a tensor is
// ‖ours − ref‖₂ / ‖ref‖₂; every line prints it with its bound, and any excess exits 1.
//
// Bounds: fp32 has a unit roundoff of 6e-8; our ops accumulate long sums in double or in sgemm's
// fp32 over at most a few hundred terms, so forward tensors land near 1e-7 (bounds 1e-6..1e-5).
// Gradients pass through twice as many ops and land near 1e-6: bound 1e-5, ten times tighter than
// the 1e-4. Losses and gradient norms 1e-5 relative.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"
#include "tensor/safetensors.h"
#include "train/optimizer.h"
#include "util/error.h"
#include "util/files.h"

using namespace scratchlm;

namespace {

int failures = 0, checks = 0;

double rel_error(const float* ours, const std::vector<float>& ref) {
  double diff = 0.0, norm = 0.0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(ours[i]) - ref[i];
    diff += d * d;
    norm += static_cast<double>(ref[i]) * ref[i];
  }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

void report(const std::string& what, double err, double bound) {
  ++checks;
  const bool ok = err <= bound && std::isfinite(err);
  if (!ok) ++failures;
  std::printf("%-4s %-48s error %.2e  (bound %.0e)\n", ok ? "ok" : "FAIL", what.c_str(), err, bound);
}

void check(const std::string& what, const float* ours, const std::vector<float>& ref, double bound) {
  report(what, rel_error(ours, ref), bound);
}

void check_scalar(const std::string& what, double ours, double ref, double bound) {
  report(what, std::fabs(ours - ref) / std::max(1.0, std::fabs(ref)), bound);
}

std::vector<std::int32_t> ints32(const SafetensorsFile& f, const std::string& name) {
  std::vector<std::int32_t> out;
  for (std::int64_t v : f.ints(name)) out.push_back(static_cast<std::int32_t>(v));
  return out;
}

// (B, H, T, D) → (B, T, H, D) and back: the reference's per-op layout vs ours.
std::vector<float> bhtd_to_bthd(const std::vector<float>& x, std::int64_t B, std::int64_t H, std::int64_t T,
                                std::int64_t D, bool inverse = false) {
  std::vector<float> y(x.size());
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t d = 0; d < D; ++d) {
          const std::int64_t bhtd = ((b * H + h) * T + t) * D + d, bthd = ((b * T + t) * H + h) * D + d;
          if (inverse) y[bhtd] = x[bthd];
          else y[bthd] = x[bhtd];
        }
  return y;
}

void load_params(Model& model, const SafetensorsFile& f, const std::string& prefix) {
  for (const ParamSpec& s : model.layout.specs) f.read_f32(prefix + s.name, s.shape, model.params.data() + s.offset);
}

void check_model(const SafetensorsFile& f, const nlohmann::json& js, const ModelConfig& cfg) {
  const std::int64_t B = js["config"]["batch"], T = js["config"]["seq"], C = cfg.d_model;
  Model model(cfg);
  load_params(model, f, "param.");
  const auto ids = ints32(f, "input.ids"), targets = ints32(f, "input.targets");
  Activations acts(cfg, B, T);
  model_forward(acts, model, ids.data(), B, T);
  const double loss = model_loss(acts, model, targets.data());
  check("forward act.embed", acts.layers[0].x_in.data(), f.floats("act.embed"), 1e-6);
  for (std::int64_t i = 0; i < cfg.num_layers; ++i) {
    const float* ours = i + 1 < cfg.num_layers ? acts.layers[i + 1].x_in.data() : acts.x_final.data();
    check("forward act.layers." + std::to_string(i), ours, f.floats("act.layers." + std::to_string(i)), 1e-5);
  }
  check("forward act.ln_final", acts.ln_final.data(), f.floats("act.ln_final"), 1e-5);
  check("forward out.logits", acts.logits.data(), f.floats("out.logits"), 1e-5);
  check_scalar("loss", loss, js["loss"].get<double>(), 1e-5);
  std::vector<float> grads(static_cast<std::size_t>(model.layout.total), 0.0f);
  model_backward(grads, acts, model, ids.data(), targets.data(), 1.0f);
  for (const ParamSpec& s : model.layout.specs) check("grad." + s.name, grads.data() + s.offset, f.floats("grad." + s.name), 1e-5);
  (void)C;
}

void check_ops(const SafetensorsFile& f, const nlohmann::json& js, const ModelConfig& cfg) {
  const std::int64_t B = js["config"]["batch"], T = js["config"]["seq"], C = cfg.d_model, H = cfg.num_heads,
                     D = cfg.d_head(), F = cfg.d_ff, V = cfg.vocab_size, N = B * T;
  {  // RMSNorm
    const auto x = f.floats("rmsnorm.x"), gain = f.floats("rmsnorm.gain"), dout = f.floats("rmsnorm.dout");
    std::vector<float> out(x.size()), rstd(N), dx(x.size()), dgain(C, 0.0f);
    rmsnorm_forward(out.data(), rstd.data(), x.data(), gain.data(), N, C);
    rmsnorm_backward(dx.data(), dgain.data(), dout.data(), x.data(), gain.data(), rstd.data(), N, C, Accumulate::no);
    check("op rmsnorm out", out.data(), f.floats("rmsnorm.out"), 1e-6);
    check("op rmsnorm dx", dx.data(), f.floats("rmsnorm.dx"), 1e-5);
    check("op rmsnorm dgain", dgain.data(), f.floats("rmsnorm.dgain"), 1e-5);
  }
  {  // RoPE on (B, H, T, D) = (B·H, T, 1, D) at positions 5, 8, 11, ...
    const auto x = f.floats("rope.x"), dout = f.floats("rope.dout");
    const auto pos = ints32(f, "rope.positions");
    std::int32_t max_pos = 0;
    for (std::int32_t p : pos) max_pos = std::max(max_pos, p);
    const RopeTable table = make_rope_table(cfg.rope_theta, D, max_pos + 1);
    std::vector<float> out(x.size()), dx(x.size());
    rope_forward(out.data(), x.data(), pos.data(), table, B * H, T, 1, D);
    rope_backward(dx.data(), dout.data(), pos.data(), table, B * H, T, 1, D);
    check("op rope out", out.data(), f.floats("rope.out"), 1e-6);
    check("op rope dx", dx.data(), f.floats("rope.dx"), 1e-6);
  }
  {  // attention, reference layout (B, H, T, D)
    const auto q = bhtd_to_bthd(f.floats("attn.q"), B, H, T, D), k = bhtd_to_bthd(f.floats("attn.k"), B, H, T, D),
               v = bhtd_to_bthd(f.floats("attn.v"), B, H, T, D), dout = bhtd_to_bthd(f.floats("attn.dout"), B, H, T, D);
    std::vector<float> out(q.size()), lse(B * H * T), dq(q.size()), dk(q.size()), dv(q.size());
    AttentionDims dims{.B = B, .H = H, .D = D, .Tq = T, .Tk = T, .kv_batch_stride = 0};
    attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), dims);
    attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), dims);
    check("op attention out", bhtd_to_bthd(out, B, H, T, D, true).data(), f.floats("attn.out"), 1e-6);
    check("op attention dq", bhtd_to_bthd(dq, B, H, T, D, true).data(), f.floats("attn.dq"), 1e-5);
    check("op attention dk", bhtd_to_bthd(dk, B, H, T, D, true).data(), f.floats("attn.dk"), 1e-5);
    check("op attention dv", bhtd_to_bthd(dv, B, H, T, D, true).data(), f.floats("attn.dv"), 1e-5);
  }
  {  // SwiGLU feed-forward: three linear ops around the gate
    const auto x = f.floats("swiglu.x"), w1 = f.floats("swiglu.w1"), w2 = f.floats("swiglu.w2"),
               w3 = f.floats("swiglu.w3"), dout = f.floats("swiglu.dout");
    std::vector<float> a(N * F), b(N * F), h(N * F), out(N * C), dh(N * F), da(N * F), db(N * F), dx(N * C);
    std::vector<float> dw1(F * C, 0.0f), dw2(C * F, 0.0f), dw3(F * C, 0.0f);
    linear_forward(a.data(), x.data(), w1.data(), N, C, F);
    linear_forward(b.data(), x.data(), w3.data(), N, C, F);
    swiglu_forward(h.data(), a.data(), b.data(), N * F);
    linear_forward(out.data(), h.data(), w2.data(), N, F, C);
    linear_backward(dh.data(), dw2.data(), dout.data(), h.data(), w2.data(), N, F, C, Accumulate::no);
    swiglu_backward(da.data(), db.data(), dh.data(), a.data(), b.data(), N * F);
    linear_backward(dx.data(), dw1.data(), da.data(), x.data(), w1.data(), N, C, F, Accumulate::no);
    linear_backward(dx.data(), dw3.data(), db.data(), x.data(), w3.data(), N, C, F, Accumulate::yes);
    check("op swiglu out", out.data(), f.floats("swiglu.out"), 1e-5);
    check("op swiglu dx", dx.data(), f.floats("swiglu.dx"), 1e-5);
    check("op swiglu dw1", dw1.data(), f.floats("swiglu.dw1"), 1e-5);
    check("op swiglu dw2", dw2.data(), f.floats("swiglu.dw2"), 1e-5);
    check("op swiglu dw3", dw3.data(), f.floats("swiglu.dw3"), 1e-5);
  }
  {  // cross-entropy at logits of scale ~30
    const auto logits = f.floats("xent.logits");
    const auto targets = ints32(f, "xent.targets");
    std::vector<float> losses(N), lse(N), dlogits(logits.size());
    const double loss = cross_entropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), N, V);
    cross_entropy_backward(dlogits.data(), logits.data(), lse.data(), targets.data(), N, V, 1.0f / static_cast<float>(N));
    check_scalar("op cross-entropy loss", loss, js["xent.loss"].get<double>(), 1e-5);
    check("op cross-entropy dlogits", dlogits.data(), f.floats("xent.dlogits"), 1e-5);
  }
}

void check_training(const SafetensorsFile& f, const nlohmann::json& js, const ModelConfig& cfg) {
  const nlohmann::json& t = js["train"];
  const std::int64_t B = js["config"]["batch"], T = js["config"]["seq"];
  Model model(cfg);
  load_params(model, f, "param.");
  AdamWOptions opt{.beta1 = t["betas"][0], .beta2 = t["betas"][1], .eps = t["eps"], .weight_decay = t["weight_decay"],
                   .decay_norm_gains = true};
  AdamWState state(model.layout.total);
  std::vector<float> grads(static_cast<std::size_t>(model.layout.total));
  Activations acts(cfg, B, T);
  const std::int64_t steps = t["steps"];
  for (std::int64_t s = 0; s < steps; ++s) {
    const auto batch = ints32(f, "train.step" + std::to_string(s) + ".ids");   // (B, T + 1)
    std::vector<std::int32_t> x, y;
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t i = 0; i < T; ++i) {
        x.push_back(batch[b * (T + 1) + i]);
        y.push_back(batch[b * (T + 1) + i + 1]);
      }
    const double lr = cosine_lr(s, t["lr_max"], t["lr_min"], t["warmup"], t["cycle"]);
    std::fill(grads.begin(), grads.end(), 0.0f);
    model_forward(acts, model, x.data(), B, T);
    const double loss = model_loss(acts, model, y.data());
    model_backward(grads, acts, model, x.data(), y.data(), 1.0f);
    const double norm = clip_grad_norm(grads.data(), model.layout.total, t["clip"]);
    adamw_step(model.params.data(), grads.data(), state, model.layout, lr, opt);
    const std::string step = "train step " + std::to_string(s);
    check_scalar(step + " lr", lr, js["train.lrs"][s].get<double>(), 1e-12);
    check_scalar(step + " loss", loss, js["train.losses"][s].get<double>(), 1e-5);
    check_scalar(step + " grad norm before clip", norm, js["train.grad_norms_before_clip"][s].get<double>(), 1e-5);
  }
  for (const ParamSpec& s : model.layout.specs)
    check("train.final." + s.name, model.params.data() + s.offset, f.floats("train.final." + s.name), 1e-5);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : SCRATCHLM_TEST_DATA "/reference/lm-small";
  try {
    const SafetensorsFile f(dir + "/reference.safetensors");
    const nlohmann::json js = nlohmann::json::parse(read_file(dir + "/reference.json"));
    nlohmann::json model_json = js.at("config");
    model_json.erase("batch");
    model_json.erase("seq");
    const ModelConfig cfg = model_config_from_json(model_json, dir + "/reference.json");
    std::printf("parity against %s (vocab %lld, d_model %lld, %lld layers, %lld heads)\n", dir.c_str(),
                static_cast<long long>(cfg.vocab_size), static_cast<long long>(cfg.d_model),
                static_cast<long long>(cfg.num_layers), static_cast<long long>(cfg.num_heads));
    check_model(f, js, cfg);
    check_ops(f, js, cfg);
    check_training(f, js, cfg);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  std::printf("%d of %d checks passed\n", checks - failures, checks);
  return failures == 0 ? 0 : 1;
}
