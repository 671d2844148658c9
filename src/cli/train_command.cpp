// `scratchlm train`: trains the model on token files, from a JSON run config whose every field a
// flag of the same dotted name overrides, or continues a run from its checkpoint (--resume).
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>

#include "cli/commands.h"
#include "train/checkpoint.h"
#include "train/train_config.h"
#include "train/trainer.h"
#include "util/error.h"
#include "util/json_file.h"

namespace scratchlm::cli {
namespace {

struct TrainArgs {
  std::string config, resume;
  std::map<std::string, std::string> fields;   // dotted field → flag text, for the flags given
};

void run(const TrainArgs& args, const std::map<std::string, CLI::Option*>& options) {
  // Layers, later ones winning: defaults, the checkpoint's run config, the file, the flags.
  nlohmann::ordered_json j = train_defaults();
  std::string checkpoint;
  if (!args.resume.empty()) {
    checkpoint = resolve_checkpoint(args.resume);
    merge_train_json(j, read_checkpoint_state(checkpoint).run_config, checkpoint + "/state.json");
  }
  if (!args.config.empty()) merge_train_json(j, read_json_file(args.config), args.config);
  nlohmann::json flags = nlohmann::json::object();
  for (const auto& [name, option] : options) {
    if (option->count() == 0) continue;
    const std::string& text = args.fields.at(name);
    const auto dot = name.find('.');
    if (dot == std::string::npos) flags[name] = parse_flag_value(name, text);
    else flags[name.substr(0, dot)][name.substr(dot + 1)] = parse_flag_value(name, text);
  }
  merge_train_json(j, flags, "flags");
  if (!j.contains("model"))
    fail("train: no model config: give --config FILE, --resume DIR, or the --model.* and --train_data flags");
  const TrainConfig cfg = train_config_from_json(j);
  const TrainResult r = run_training(cfg, checkpoint);
  std::printf("trained %lld steps: final train loss %.4f", static_cast<long long>(r.steps_done), r.final_train_loss);
  if (!std::isnan(r.final_val_loss)) std::printf(", validation loss %.4f (perplexity %.2f)", r.final_val_loss, std::exp(r.final_val_loss));
  std::printf("; %.0f tokens/s\ncheckpoint: %s\nmetrics: %s/metrics.jsonl\n", r.tokens_per_s, r.last_checkpoint.c_str(),
              cfg.out_dir.c_str());
  if (r.interrupted) std::exit(130);
}

}  // namespace

void register_train_command(CLI::App& app) {
  auto args = std::make_shared<TrainArgs>();
  auto options = std::make_shared<std::map<std::string, CLI::Option*>>();
  CLI::App* sub = app.add_subcommand("train", "Train a Transformer language model on token files (GPU when present, else CPU)");
  sub->footer(
      "Every field of the run config can be given as a flag of the same dotted name, which wins over the file,\n"
      "e.g. --steps 2000 --optimizer.lr_max 3e-4 --model.d_model 256. See configs/ for examples.\n"
      "Writes <out_dir>/config.json, metrics.jsonl and checkpoints/step_N/ (model.safetensors with CS336 names).");
  sub->add_option("--config", args->config, "JSON run config (see docs/training.md)");
  sub->add_option("--resume", args->resume,
                  "continue from a checkpoint directory, or a run directory's newest checkpoint, exactly");
  for (const TrainField& f : train_fields())
    (*options)[f.name] = sub->add_option("--" + f.name, args->fields[f.name], f.help)
                             ->type_name(f.name.ends_with("_data") || f.name == "out_dir" ? "PATH" : "VALUE")
                             ->group("Run config fields");
  sub->callback([args, options]() { run(*args, *options); });
}

}  // namespace scratchlm::cli
