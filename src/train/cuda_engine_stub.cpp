// Builds without CUDA: the CUDA engine is train/cuda/cuda_engine.cu; this stands in for it.
#include "train/engine.h"
#include "util/error.h"

#ifndef SCRATCHLM_CUDA
namespace scratchlm {

std::unique_ptr<TrainEngine> make_cuda_engine(const TrainConfig&, Model&, AdamWState&) {
  fail("this build of scratchlm has no CUDA; train with --device cpu");
}

}  // namespace scratchlm
#endif
