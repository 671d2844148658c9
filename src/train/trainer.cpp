#include "train/trainer.h"

#include <omp.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <limits>

#include "model/accounting.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/engine.h"
#include "util/error.h"
#include "util/files.h"
#include "util/progress.h"

namespace fs = std::filesystem;

namespace scratchlm {
namespace {

std::atomic<bool> g_interrupted{false};

void on_sigint(int) {
  g_interrupted = true;
  std::signal(SIGINT, SIG_DFL);   // a second Ctrl-C stops at once
}

// The first `keep_through_step` records of an earlier segment's metrics, so that a resumed run's
// file reads as one run (records past the checkpoint are re-done).
void truncate_metrics(const std::string& path, std::int64_t keep_through_step) {
  if (!fs::exists(path)) return;
  const std::string text = read_file(path);
  std::string kept;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    try {
      const auto j = nlohmann::json::parse(line);
      if (j.value("step", std::int64_t{0}) <= keep_through_step) kept += line + "\n";
    } catch (const nlohmann::json::exception&) {   // a line cut by the interruption
    }
  }
  write_file_atomic(path, kept);
}

class MetricsLog {
 public:
  explicit MetricsLog(const std::string& path) : path_(path), file_(std::fopen(path.c_str(), "a")) {
    if (!file_) fail(path, ": cannot open for writing");
  }
  ~MetricsLog() { std::fclose(file_); }
  void write(const nlohmann::ordered_json& record) {
    std::fprintf(file_, "%s\n", record.dump().c_str());
    std::fflush(file_);
  }

 private:
  std::string path_;
  std::FILE* file_;
};

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

// "step 50: moe aux 2.06 (Σ over 2 layers; 1 a layer when balanced); expert tokens layer 0: 27% 24% 25% 24%, ..."
// — each expert's share of its layer's routed assignments, and the dropped share with a capacity.
std::string moe_line(std::int64_t step, const StepResult& r, const ModelConfig& mc) {
  std::string line = str("step ", step, ": moe aux ", fmt("%.4f", r.moe_aux), " (sum over ", mc.num_layers,
                         " layers; 1 a layer when balanced); expert tokens");
  for (std::size_t l = 0; l < r.expert_tokens.size(); ++l) {
    std::int64_t total = 0;
    for (std::int64_t n : r.expert_tokens[l]) total += n;
    const double share = 100.0 / static_cast<double>(std::max<std::int64_t>(total, 1));
    line += str(l == 0 ? " layer " : ", layer ", l, ":");
    for (std::int64_t n : r.expert_tokens[l]) line += str(" ", fmt("%.0f%%", share * static_cast<double>(n)));
    if (mc.moe.capacity_factor > 0) line += str(" (dropped ", fmt("%.1f%%", share * static_cast<double>(r.moe_dropped[l])), ")");
  }
  return line;
}

}  // namespace

TrainResult run_training(const TrainConfig& cfg, const std::string& resume_checkpoint) {
  const ModelConfig& mc = cfg.model;
  const std::int64_t B = cfg.batch_size, T = mc.context_length;
  if (cfg.threads > 0) omp_set_num_threads(cfg.threads);   // else OMP_NUM_THREADS, or all cores (CPU engine)

  // Data first: the cheapest place to find a wrong path or vocabulary.
  const TokenData train(cfg.train_data, mc.vocab_size);
  if (train.size() < T + 1)
    fail(cfg.train_data, ": holds ", train.size(), " tokens, fewer than context_length + 1 = ", T + 1);
  std::unique_ptr<TokenData> valid;
  if (!cfg.valid_data.empty()) {
    valid = std::make_unique<TokenData>(cfg.valid_data, mc.vocab_size);
    if (valid->size() < T + 1)
      fail(cfg.valid_data, ": holds ", valid->size(), " tokens, fewer than context_length + 1 = ", T + 1);
  }

  const std::string checkpoints_dir = (fs::path(cfg.out_dir) / "checkpoints").string();
  if (resume_checkpoint.empty() && fs::exists(checkpoints_dir) && !fs::is_empty(checkpoints_dir))
    fail(cfg.out_dir, ": already holds checkpoints; continue it with --resume ", cfg.out_dir,
         " or choose another --out_dir");
  make_directories(cfg.out_dir);

  // Model, optimizer and sampler state: fresh from the seed, or from the checkpoint.
  Model model(mc);
  AdamWState adam(model.layout.total);
  TrainState state;
  Rng init_rng(cfg.seed);
  Rng data_rng(cfg.seed ^ 0x5eed'da7a'5eed'da7aull);   // independent of the initialisation stream
  if (resume_checkpoint.empty()) {
    init_params(model.layout, model.params.data(), init_rng);
  } else {
    load_checkpoint_weights(resume_checkpoint, model);
    const ResumeInfo info = read_checkpoint_state(resume_checkpoint);
    load_checkpoint_optimizer(resume_checkpoint, model.layout, adam);
    adam.step = info.adam_step;
    state = info.state;
    data_rng.set_state(state.data_rng);
    if (state.step >= cfg.steps)
      fail(resume_checkpoint, ": already at step ", state.step, " of ", cfg.steps, "; raise --steps to train further");
  }
  const std::string metrics_path = (fs::path(cfg.out_dir) / "metrics.jsonl").string();
  if (resume_checkpoint.empty()) write_file_atomic(metrics_path, "");
  else truncate_metrics(metrics_path, state.step);
  write_file_atomic((fs::path(cfg.out_dir) / "config.json").string(), cfg.json.dump(2) + "\n");

  // The device: the CPU computes on `model` itself, the GPU on its own copy.
  std::unique_ptr<TrainEngine> engine = cfg.device == TrainDevice::cuda ? make_cuda_engine(cfg, model, adam)
                                                                         : make_cpu_engine(cfg, model, adam);
  const std::int64_t step_tokens = B * T * cfg.grad_accum;
  std::vector<std::int32_t> x(static_cast<std::size_t>(step_tokens)), y(x.size());
  std::vector<std::int32_t> eval_x(static_cast<std::size_t>(B * T)), eval_y(eval_x.size());
  const double flops_per_token = train_flops_per_token(mc, T);
  const double peak = engine->peak_flops();

  // Effective settings and the memory plan.
  std::printf("scratchlm train: effective settings\n%s\n", cfg.json.dump(2).c_str());
  std::printf("data: %s: %lld tokens (%s%s)", cfg.train_data.c_str(), static_cast<long long>(train.size()),
              dtype_name(train.dtype()), train.has_sidecar() ? "" : ", no sidecar: read as uint16");
  if (valid) std::printf("; %s: %lld tokens", cfg.valid_data.c_str(), static_cast<long long>(valid->size()));
  std::printf("\n");
  std::printf("model: %lld parameters; %.3g GFLOP per token per training step\n",
              static_cast<long long>(model.layout.total), flops_per_token / 1e9);
  std::printf("%s\n", engine->describe().c_str());
  if (!resume_checkpoint.empty())
    std::printf("resuming from %s at step %lld\n", resume_checkpoint.c_str(), static_cast<long long>(state.step));
  std::fflush(stdout);

  MetricsLog metrics(metrics_path);
  TrainResult result;
  result.final_val_loss = std::numeric_limits<double>::quiet_NaN();
  std::string last_checkpoint = resume_checkpoint;

  auto evaluate = [&]() {
    // Fixed windows spread over the validation file, batch by batch.
    const std::int64_t windows = cfg.eval_batches * B;
    double sum = 0;
    for (std::int64_t e = 0; e < cfg.eval_batches; ++e) {
      window_batch(eval_x.data(), eval_y.data(), *valid, B, T, e * B, windows);
      sum += engine->eval_loss(eval_x.data(), eval_y.data());
    }
    return sum / static_cast<double>(cfg.eval_batches);
  };
  // The sampler's state after the batches of the last finished step (the next step's batch is drawn
  // ahead, while the device works).
  auto rng_at_step = data_rng.state();
  auto checkpoint = [&](double segment_elapsed) {
    engine->sync_to_host();
    TrainState saved = state;
    saved.data_rng = rng_at_step;
    saved.elapsed_s += segment_elapsed;   // training time of all segments so far
    last_checkpoint = save_checkpoint(checkpoints_dir, model, adam, saved, cfg.json);
    prune_checkpoints(checkpoints_dir, cfg.checkpoint_keep);
  };

  std::signal(SIGINT, on_sigint);
  g_interrupted = false;
  Progress progress("train", cfg.steps, "steps");
  progress.set_initial(state.step);
  const double segment_start = now_seconds();
  double interval_start = segment_start, excluded = 0;   // eval/checkpoint time left out of tokens/s
  double aside_total = 0;   // all evaluation and checkpoint time of this segment (left out of train_s)
  std::int64_t interval_tokens = 0;
  double tokens_per_s = 0, mfu = 0;
  auto draw_batch = [&] {
    for (std::int64_t micro = 0; micro < cfg.grad_accum; ++micro)
      sample_batch(x.data() + micro * B * T, y.data() + micro * B * T, train, B, T, data_rng);
  };
  if (state.step < cfg.steps) {
    draw_batch();
    engine->stage_step(x.data(), y.data());
  }
  while (state.step < cfg.steps) {
    engine->submit_step(state.step);
    rng_at_step = data_rng.state();
    if (state.step + 1 < cfg.steps) {   // the next batch, while the device runs this step
      draw_batch();
      engine->stage_step(x.data(), y.data());
    }
    const StepResult r = engine->finish_step();
    const double loss = r.loss, norm = r.grad_norm, lr = r.lr;
    if (!r.updated) {
      progress.finish();
      fail("step ", state.step + 1, ": the ", std::isfinite(loss) ? "gradient norm" : "loss", " is ",
           std::isfinite(loss) ? norm : loss, "; stopping without updating. ",
           last_checkpoint.empty() ? std::string("No checkpoint was written yet")
                                   : "The last good checkpoint is " + last_checkpoint + " (intact)",
           ". Try a lower optimizer.lr_max or more warmup.");
    }
    state.step += 1;
    state.tokens_seen += step_tokens;
    interval_tokens += step_tokens;
    const bool last = state.step == cfg.steps;

    if (state.step % cfg.log_interval == 0 || last || state.step == 1) {
      const double now = now_seconds();
      tokens_per_s = static_cast<double>(interval_tokens) / std::max(1e-9, now - interval_start - excluded);
      mfu = tokens_per_s * flops_per_token / peak;
      interval_start = now;
      excluded = 0;
      interval_tokens = 0;
      nlohmann::ordered_json record = {{"step", state.step}, {"train_loss", loss}, {"lr", lr}, {"grad_norm", norm},
                                        {"tokens", state.tokens_seen}, {"tokens_per_s", tokens_per_s}, {"mfu", mfu},
                                        {"elapsed_s", state.elapsed_s + now - segment_start},
                                        {"train_s", state.elapsed_s + now - segment_start - aside_total}};
      if (mc.is_moe()) {
        record["moe_aux"] = r.moe_aux;
        record["expert_tokens"] = r.expert_tokens;
        if (mc.moe.capacity_factor > 0) record["moe_dropped"] = r.moe_dropped;
        progress.print(moe_line(state.step, r, mc));
      }
      metrics.write(record);
    }
    result.final_train_loss = loss;
    progress.set(state.step, "loss " + fmt("%.4f", loss) + "  lr " + fmt("%.2e", lr) + "  gnorm " + fmt("%.3f", norm) +
                                 "  " + fmt("%.0f", tokens_per_s) + " tok/s  MFU " + fmt("%.1f%%", 100 * mfu));

    const double aside_start = now_seconds();
    if (valid && ((cfg.eval_interval > 0 && state.step % cfg.eval_interval == 0) || last)) {
      const double val = evaluate();
      result.final_val_loss = val;
      metrics.write({{"step", state.step}, {"val_loss", val}, {"val_ppl", std::exp(val)},
                     {"elapsed_s", state.elapsed_s + now_seconds() - segment_start},
                     {"train_s", state.elapsed_s + aside_start - segment_start - aside_total}});
      progress.print("step " + std::to_string(state.step) + ": train loss " + fmt("%.4f", loss) + ", val loss " +
                     fmt("%.4f", val) + " (perplexity " + fmt("%.2f", std::exp(val)) + ")");
    }
    const bool stop = g_interrupted.load();
    if ((cfg.checkpoint_interval > 0 && state.step % cfg.checkpoint_interval == 0) || last || stop) {
      checkpoint(now_seconds() - segment_start);
      progress.print("step " + std::to_string(state.step) + ": checkpoint " + last_checkpoint);
    }
    excluded += now_seconds() - aside_start;
    aside_total += now_seconds() - aside_start;
    if (stop) {
      progress.print("interrupted: stopped after step " + std::to_string(state.step) + "; continue with --resume " +
                     cfg.out_dir);
      result.interrupted = true;
      break;
    }
  }
  progress.finish();
  std::signal(SIGINT, SIG_DFL);
  result.steps_done = state.step;
  result.tokens_per_s = tokens_per_s;
  result.last_checkpoint = last_checkpoint;
  return result;
}

}  // namespace scratchlm
