// The run configuration of `scratchlm train`, a JSON file; every field can also be set by a flag of
// the same dotted name (--optimizer.lr_max 3e-4, --model.d_model 128, --steps 500). Defaults are
// below; "model" and "train_data" have none. An unknown field, or a value of the wrong type, is an
// error naming the field.
//
// {
//   "model": {"vocab_size": .., "context_length": .., "d_model": .., "num_layers": .., "num_heads": ..,
//             "d_ff": .., "rope_theta": 10000.0},
//   "train_data": "train.bin",   "valid_data": "valid.bin" (optional: "" for none),
//   "batch_size": 32,   "grad_accum": 1,   "steps": 1000,   "seed": 0,   "threads": 0 (all cores),
//   "optimizer": {"lr_max": 1e-3, "lr_min": 1e-4, "warmup": 100, "cycle": 0 (= steps),
//                 "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1,
//                 "decay_norm_gains": true, "clip": 1.0 (0 = off)},
//   "eval": {"interval": 100, "batches": 10},
//   "checkpoint": {"interval": 500 (0 = only at the end), "keep": 3 (0 = all)},
//   "log_interval": 10,   "out_dir": "runs/train",   "peak_flops": 0 (0 = measure sgemm / GPU default),
//   "device": "auto" (cuda when a GPU is present, else cpu),   "precision": "bf16" (GPU only),
//   "recompute": false (GPU only)
// }
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/config.h"
#include "train/optimizer.h"

namespace scratchlm {

enum class TrainDevice { cpu, cuda };

struct TrainConfig {
  ModelConfig model;
  std::string train_data, valid_data;
  std::int64_t batch_size = 32, grad_accum = 1, steps = 1000;
  std::uint64_t seed = 0;
  int threads = 0;
  double lr_max = 1e-3, lr_min = 1e-4;
  std::int64_t warmup = 100, cycle = 0;
  AdamWOptions adamw;
  double clip = 1.0;
  std::int64_t eval_interval = 100, eval_batches = 10;
  std::int64_t checkpoint_interval = 500, checkpoint_keep = 3;
  std::int64_t log_interval = 10;
  std::string out_dir = "runs/train";
  double peak_flops = 0;
  TrainDevice device = TrainDevice::cpu;
  bool bf16 = true;         // GPU working precision (the CPU path is fp32)
  bool recompute = false;   // GPU: recompute the feed-forward activations in backward

  nlohmann::ordered_json json;   // the effective configuration, as printed and saved
};

// Every settable field: dotted name and a one-line description (for --help).
struct TrainField {
  std::string name;
  std::string help;
};
const std::vector<TrainField>& train_fields();

// The defaults as JSON (without "model" and "train_data").
nlohmann::ordered_json train_defaults();

// Merges `overlay` into `base` field by field; each key must exist in the schema (`where` names the
// source: a file or "flags"). Throws Error naming an unknown field.
void merge_train_json(nlohmann::ordered_json& base, const nlohmann::json& overlay, const std::string& where);

// A flag value ("3e-4", "true", "runs/x") as JSON of the field's type.
nlohmann::json parse_flag_value(const std::string& field, const std::string& text);

// Checks types and ranges and builds the struct. Throws Error naming the field.
TrainConfig train_config_from_json(const nlohmann::ordered_json& j);

}  // namespace scratchlm
