// scratchlm: train a tokenizer, tokenize a corpus, train a language model, generate text.
// This file wires the subcommands together and turns every error into one clear message and a
// non-zero exit status.
#include <cstdio>
#include <exception>
#include <new>
#include <thread>

#include "cli/commands.h"
#include "util/error.h"

namespace scratchlm::cli {
int default_threads() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }
}  // namespace scratchlm::cli

int main(int argc, char** argv) {
  CLI::App app{"scratchlm — language models from scratch: tokenizer, training, generation"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "scratchlm 0.1");
  scratchlm::cli::register_tokenizer_commands(app);
  scratchlm::cli::register_info_command(app);
  scratchlm::cli::register_train_command(app);
  scratchlm::cli::register_generate_command(app);
  scratchlm::cli::register_accounting_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const scratchlm::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
