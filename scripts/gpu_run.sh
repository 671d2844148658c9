#!/usr/bin/env bash
# Everything GPU in one call of the device tool (the GPU machine; build made here and staged by
# scripts/stage_device.sh into .device/build.tar.xz, carried as .device):
#   scripts/gpu_run.sh [tests,bench,parity,profile,ttl,generate]     (default: tests,bench,parity)
#   tests   PyTorch's own bf16 errors (reference/torch_bf16_errors.py), then the whole ctest suite,
#           GPU tests included;
#   bench   bench/train_gpu/run.sh: scratchlm against torch_lm.py (eager, compile), same GPU;
#   profile the time per part of one step of each benchmark model;
#   parity  bench/train_gpu/parity.sh: CPU fp32 vs GPU bf16 validation losses on Gutenberg tokens;
#   ttl     bench/train_gpu/time_to_loss.sh: validation loss against training time, ours and torch.compile.
#   attention bench/attention/run.sh: our flash attention against PyTorch SDPA (FlashAttention-2, cuDNN).
#   wgmma   bench/attention/wgmma_lab.sh: the staged wgmma attention lab (needs only
#           build/scratchlm_wgmma_lab, or the staged build; see bench/attention/WGMMA_NOTES.md).
#           WGMMA_STAGES=info,gemm,bwd,btime (say) runs some of its stages (default: all).
#   variants bench/train_gpu/variants.sh: the issue-6 variants' training tokens/s against the default.
#   generate the GPU decoder's tests (GpuDecodeKernels.*, GpuDecoder.*, GenerateCommand.*), then
#           bench/generate/run.sh with the time per kernel (PROFILE=1): ours against torch_decode.py
#           and Hugging Face generate; logs in $OUT/generate/ (tests.log, gpu_tests.log, bench.log).
#           GENERATE=tests or GENERATE=bench runs one half (default both).
# parity and ttl need the token files of scripts/prepare_gutenberg.sh in .device/data.
# Logs and the fixtures written go to $OUT (when set) for the caller to keep.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-tests,bench,parity}
out=${OUT:-/tmp/scratchlm-gpu}
mkdir -p "$out"
status=0
if [[ ! -d .device/build && -f .device/build.tar.xz ]]; then tar -C .device -xJf .device/build.tar.xz; fi
export BENCH_BUILD=.device/build
if [[ ",$what," == *,tests,* ]]; then
  PYTHONUNBUFFERED=1 python3 reference/torch_bf16_errors.py tests/data/reference/lm-small > "$out/torch_bf16_errors.log" 2>&1 \
    || { echo "torch_bf16_errors.py failed:"; tail -20 "$out/torch_bf16_errors.log"; status=1; }
  cp tests/data/reference/lm-small/torch_bf16_errors.json tests/data/reference/lm-small/attention_cases.safetensors "$out/" 2>/dev/null
  scripts/device_check.sh .device/build > "$out/ctest.log" 2>&1 || status=1
  grep -E "tests passed|tests failed|Failed|\*\*\*" "$out/ctest.log" | head -40
  .device/build/tests/scratchlm_tests --gtest_filter='Gpu*' 2>&1 | grep -E "^  |OK|FAILED" > "$out/gpu_tests.log"
  head -80 "$out/gpu_tests.log"
fi
if [[ ",$what," == *,profile,* ]]; then   # where the step's time goes, per part
  for c in ts-17M gpt2s-124M; do
    .device/build/scratchlm_bench_gpu bench/train_gpu/configs/$c.json --steps 10 --profile 1 2>&1 | tee -a "$out/profile.log"
  done
fi
if [[ ",$what," == *,bench,* ]]; then
  bench/train_gpu/run.sh 2>&1 | tee "$out/bench.log" | tail -12 || status=1
fi
if [[ ",$what," == *,parity,* ]]; then
  bench/train_gpu/parity.sh 2>&1 | tee "$out/parity.log" | tail -14 || status=1
  cp runs/parity-cpu/metrics.jsonl "$out/parity_cpu_metrics.jsonl"; cp runs/parity-gpu/metrics.jsonl "$out/parity_gpu_metrics.jsonl"
fi
if [[ ",$what," == *,attention,* ]]; then
  bench/attention/run.sh > "$out/attention.log" 2>&1 || status=1
  sed -n '/^shape (B,H,T,D)/,$p' "$out/attention.log"
fi
if [[ ",$what," == *,wgmma,* ]]; then
  bench/attention/wgmma_lab.sh "" "${WGMMA_STAGES:-}" 2>&1 | tee "$out/wgmma_lab.log" | tail -100 || status=1
fi
gen_parts=${GENERATE:-tests,bench}
if [[ ",$what," == *,generate,* && ",$gen_parts," == *,tests,* ]]; then
  mkdir -p "$out/generate"
  # the command's tests through ctest (which needs device_check.sh's links), the kernel and decoder
  # tests directly, for their printed errors
  scripts/device_check.sh .device/build '^GenerateCommand' > "$out/generate/tests.log" 2>&1 || status=1
  grep -E "tests passed|tests failed|Failed|\*\*\*" "$out/generate/tests.log" | head -20
  .device/build/tests/scratchlm_tests --gtest_filter='GpuDecod*' > "$out/generate/gpu_tests.log" 2>&1 || status=1
  grep -E "^  |OK \]|FAILED|PASSED|Failure" "$out/generate/gpu_tests.log" | head -80
fi
if [[ ",$what," == *,generate,* && ",$gen_parts," == *,bench,* ]]; then
  mkdir -p "$out/generate"
  PROFILE=1 bench/generate/run.sh > "$out/generate/bench.log" 2>&1 || status=1
  sed -n '/^device-to-device/,$p' "$out/generate/bench.log"
fi
if [[ ",$what," == *,variants,* ]]; then
  bench/train_gpu/variants.sh > "$out/variants.log" 2>&1 || status=1
  sed -n '/^variant /,$p' "$out/variants.log"
fi
if [[ ",$what," == *,ttl,* ]]; then
  bench/train_gpu/time_to_loss.sh 2>&1 | tee "$out/ttl.log" | tail -12 || status=1
fi
exit $status
