// Builds without CUDA: generate_gpu is generate/cuda/generate_gpu.cu; this stands in for it.
#include "generate/generate.h"
#include "util/error.h"

#ifndef SCRATCHLM_CUDA
namespace scratchlm {

GenerateResult generate_gpu(const Model&, bool, const std::vector<std::int32_t>&, std::int64_t, const SampleOptions&,
                            std::int32_t, Rng&, const std::function<void(std::int32_t)>&) {
  fail("this build of scratchlm has no CUDA; generate with --device cpu");
}

}  // namespace scratchlm
#endif
