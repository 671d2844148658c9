// `scratchlm accounting --config FILE [--batch B] [--seq T] [--json]`: parameters, FLOPs and fp32
// memory of a model shape (model/accounting.h), without allocating the model. FILE is a model config
// ({"vocab_size": .., "context_length": .., "d_model": .., "num_layers": .., "num_heads": ..,
// "d_ff": .., "rope_theta": ..}) or a run config holding one under "model" (its other keys are
// ignored here).
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/commands.h"
#include "model/accounting.h"
#include "model/config.h"
#include "util/error.h"
#include "util/json_file.h"

namespace scratchlm::cli {

namespace {

struct AccountingArgs {
  std::string config;
  std::int64_t batch = 1;
  std::int64_t seq = 0;   // 0: the model's context_length
  bool json = false;
};

// The model config in `path`: the whole file, or its "model" object if it is a run config.
ModelConfig load_model_config(const std::string& path) {
  const nlohmann::json j = read_json_file(path);
  if (j.is_object() && j.contains("model")) return model_config_from_json(j["model"], path + " (\"model\")");
  return model_config_from_json(j, path);
}

void run_accounting(const AccountingArgs& args) {
  const ModelConfig c = load_model_config(args.config);
  if (args.batch <= 0) fail("--batch must be positive, got ", args.batch);
  if (args.seq < 0) fail("--seq must be positive, got ", args.seq);
  const std::int64_t seq = args.seq == 0 ? c.context_length : args.seq;
  if (seq > c.context_length)
    fail("--seq ", seq, " exceeds the model's context_length ", c.context_length, " (", args.config, ")");
  const Accounting a = compute_accounting(c, args.batch, seq);
  const std::string text = args.json ? to_json(a).dump(2) + "\n" : accounting_table(a);
  if (std::fwrite(text.data(), 1, text.size(), stdout) != text.size()) fail("cannot write to standard output");
}

}  // namespace

void register_accounting_command(CLI::App& app) {
  auto args = std::make_shared<AccountingArgs>();
  auto* cmd = app.add_subcommand(
      "accounting",
      "Resource accounting for a model shape: parameters per component, forward/backward/training FLOPs per "
      "matmul (2·m·n·k, attention unmasked), and fp32 memory for parameters, gradients, AdamW state and the CPU "
      "path's activations");
  cmd->add_option("--config", args->config, "Model config JSON, or a run config with a \"model\" object")
      ->required();
  cmd->add_option("--batch", args->batch, "Batch size B (sequences per step) for the activation memory and step FLOPs")
      ->capture_default_str();
  cmd->add_option("--seq", args->seq, "Sequence length T (default: the model's context_length)");
  cmd->add_flag("--json", args->json, "Print the numbers as JSON instead of a table");
  cmd->callback([args] { run_accounting(*args); });
}

}  // namespace scratchlm::cli
