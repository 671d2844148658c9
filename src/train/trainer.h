// The training loop of `scratchlm train`, on the CPU or the GPU (train/engine.h):
//   for each step: lr from the cosine schedule; grad_accum micro-batches of random windows
//   (forward, loss, backward, gradients summed with weight 1/grad_accum); global-norm clipping;
//   AdamW. Every log_interval steps a metrics record, every eval.interval the validation loss over
//   fixed windows, every checkpoint.interval a checkpoint, and always at the end.
// metrics.jsonl in the run directory gets one JSON object per line:
//   {"step", "train_loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "elapsed_s", "train_s"} and
//   {"step", "val_loss", "val_ppl", "elapsed_s", "train_s"}; train_s leaves out the time spent in
//   evaluations and checkpoints (of this process; earlier segments of a resumed run count whole).
//   A mixture-of-experts model's training records also have "moe_aux" (Σ_layers of the load-balancing
//   loss, the mean over the step's micro-batches), "expert_tokens" ([[assignments per expert] per
//   layer], summed over them) and, with a capacity, "moe_dropped" ([per layer]); a line with each
//   expert's share is printed with every record.
// A NaN or infinite loss or gradient norm stops the run with an Error naming the step and the last
// good checkpoint; Ctrl-C finishes the current step, saves a checkpoint and stops.
#pragma once

#include <string>

#include "train/train_config.h"

namespace scratchlm {

struct TrainResult {
  std::int64_t steps_done = 0;
  double final_train_loss = 0, final_val_loss = 0;   // val loss NaN without validation data
  double tokens_per_s = 0;
  std::string last_checkpoint;
  bool interrupted = false;
};

// `resume_checkpoint`: a resolved checkpoint directory to continue from, or "" to start fresh.
TrainResult run_training(const TrainConfig& cfg, const std::string& resume_checkpoint);

}  // namespace scratchlm
