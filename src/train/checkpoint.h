// Checkpoints: one directory per saved step, <out_dir>/checkpoints/step_000100/, holding
//   model.safetensors      the weights, CS336 names, F32 (safetensors.torch.load_file reads it;
//                          its metadata carries the model config as JSON under "model_config")
//   optimizer.safetensors  AdamW's m.<name> and v.<name>
//   state.json             {"format": "scratchlm-checkpoint", "version": 1, "step", "adam_step",
//                           "data_rng" (four hex words), "tokens_seen", "elapsed_s", "model",
//                           "run" (the effective run config)}
// The directory is written under a temporary name and renamed, so a checkpoint that exists under
// its final name is complete; an interrupted save leaves only a ".tmp" directory behind.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "model/model.h"
#include "train/optimizer.h"
#include "util/rng.h"

namespace scratchlm {

struct TrainState {
  std::int64_t step = 0;          // optimizer steps done
  Rng::State data_rng{};          // the batch sampler's generator after `step` steps
  std::int64_t tokens_seen = 0;
  double elapsed_s = 0;           // training time before this run segment
};

// Writes <checkpoints_dir>/step_<step>/ and returns its path.
std::string save_checkpoint(const std::string& checkpoints_dir, Model& model, const AdamWState& adam,
                            const TrainState& state, const nlohmann::ordered_json& run_config);

// Deletes all but the newest `keep` step_* directories (keep 0: none deleted).
void prune_checkpoints(const std::string& checkpoints_dir, std::int64_t keep);

// A checkpoint directory itself, or a run directory (its newest checkpoints/step_*). Throws Error
// naming the path if there is none.
std::string resolve_checkpoint(const std::string& path);

// The model config a checkpoint was written for (from state.json, else model.safetensors' metadata).
ModelConfig read_checkpoint_model_config(const std::string& checkpoint_dir);

// Loads weights into `model`, whose config must equal the checkpoint's (else Error naming the
// differing field).
void load_checkpoint_weights(const std::string& checkpoint_dir, Model& model);

struct ResumeInfo {
  TrainState state;
  std::int64_t adam_step = 0;
  nlohmann::ordered_json run_config;
};
ResumeInfo read_checkpoint_state(const std::string& checkpoint_dir);
void load_checkpoint_optimizer(const std::string& checkpoint_dir, const ParamLayout& layout, AdamWState& adam);

}  // namespace scratchlm
