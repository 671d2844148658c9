// Subcommands of the scratchlm program. Each register_* adds its subcommand (options and the
// function that runs it) to the CLI11 app; errors are thrown as scratchlm::Error and reported by
// main.
#pragma once

#include <CLI/CLI.hpp>

namespace scratchlm::cli {

void register_tokenizer_commands(CLI::App& app);
void register_info_command(CLI::App& app);
void register_accounting_command(CLI::App& app);
void register_train_command(CLI::App& app);
void register_generate_command(CLI::App& app);

// Default --threads: the machine's hardware threads.
int default_threads();

}  // namespace scratchlm::cli
