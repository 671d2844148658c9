// `scratchlm info`: what this build can use (CUDA compiled in or not, the GPUs it sees, threads).
#include <cstdio>

#include "cli/commands.h"
#include "ops/linear.h"
#include "tensor/device.h"

namespace scratchlm::cli {

void register_info_command(CLI::App& app) {
  auto* info = app.add_subcommand("info", "Show the build's devices: CUDA support, GPUs, CPU threads, BLAS");
  info->callback([] {
    std::printf("cuda compiled: %s\n", cuda_compiled() ? "yes" : "no");
    int n = cuda_device_count();
    std::printf("cuda devices: %d\n", n);
    for (int i = 0; i < n; ++i) std::printf("  %d: %s\n", i, cuda_device_description(i).c_str());
    std::printf("cpu threads: %d\n", default_threads());
    std::printf("blas: %s\n", blas_description().c_str());
  });
}

}  // namespace scratchlm::cli
