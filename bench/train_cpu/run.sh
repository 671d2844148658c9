#!/usr/bin/env bash
# CPU training throughput of the reference path: for each model shape, scratchlm_bench_train
# (median step time over STEPS steps) is run REPS times and the median run is reported, with the
# machine's sgemm FLOP/s measured in the same process, the fraction of it the training step reaches
# (goal: at least half) and the share of the step spent in the linear layers' matrix products.
#   bench/train_cpu/run.sh [REPS=3] [STEPS=5]
# When the python3 on PATH (or $TORCH_PYTHON) has PyTorch, the same shapes also run through
# torch_cpu_peer.py (eager fp32, same threads) in the same run, and the table gives the ratio.
# Builds build-bench/ (CPU only, Release) unless BENCH_BUILD names a build to use. Results:
# bench/out/train_cpu.jsonl and a table.
set -euo pipefail
cd "$(dirname "$0")/../.."
reps=${1:-3}
steps=${2:-5}
build=${BENCH_BUILD:-build-bench}
if [[ -z "${BENCH_BUILD:-}" ]]; then
  cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER= >/dev/null
  cmake --build build-bench -j "$(nproc)" --target scratchlm_bench_train >/dev/null
fi
py=${TORCH_PYTHON:-python3}
have_torch=0
"$py" -c "import torch" 2>/dev/null && have_torch=1 || echo "peer: PyTorch is not installed for $py; ours only"
mkdir -p bench/out
out=bench/out/train_cpu.jsonl
: > "$out"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) threads; $(date -u +%Y-%m-%d)"
for cfg in sample-2M:16 small-9M:8 ts-17M:8; do
  name=${cfg%%:*}
  batch=${cfg##*:}
  for ((r = 0; r < reps; r++)); do
    line=$("$build/scratchlm_bench_train" "bench/train_cpu/configs/$name.json" "$batch" "$steps" | sed -n 's/^json: //p')
    echo "{\"config\": \"$name\", \"rep\": $r, \"result\": $line}" >> "$out"
    if ((have_torch)); then
      peer=$("$py" bench/train_cpu/torch_cpu_peer.py "bench/train_cpu/configs/$name.json" "$batch" "$steps" "$(nproc)")
      echo "{\"config\": \"$name\", \"rep\": $r, \"peer\": $peer}" >> "$out"
    fi
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
all_rows = [json.loads(l) for l in open(sys.argv[1])]
rows = [r for r in all_rows if "result" in r]
peers = [r for r in all_rows if "peer" in r]
print(f"{'config':<11} {'params':>10} {'batch':>9} {'tokens/s':>9} {'GFLOP/s':>8} {'sgemm':>7} {'of sgemm':>9} {'linear':>7} {'attn':>6} {'PyTorch':>9} {'ratio':>6}")
for name in dict.fromkeys(r["config"] for r in rows):
    runs = sorted((r["result"] for r in rows if r["config"] == name), key=lambda x: x["tokens_per_s"])
    m = runs[len(runs) // 2]   # the median run
    print(f"{name:<11} {m['params']:>10,} {m['batch']:>4} x {m['seq']:<4} {m['tokens_per_s']:>9,.0f} {m['achieved_gflops']:>8.1f} "
          f"{m['sgemm_gflops']:>7.1f} {100*m['fraction_of_sgemm']:>8.0f}% {100*m['linear_ms']/m['step_ms']:>6.0f}% "
          f"{100*m['attention_ms']/m['step_ms']:>5.0f}%", end="")
    p = sorted(r["peer"]["tokens_per_s"] for r in peers if r["config"] == name)
    if p:
        print(f" {p[len(p) // 2]:>9,.0f} {m['tokens_per_s'] / p[len(p) // 2]:>5.2f}x", end="")
    print()
print("tokens/s: median of", len(runs), "runs (each the median of its steps); GFLOP/s counts model FLOPs (6N + attention);")
print("PyTorch: eager fp32, same shapes, threads and step (forward, loss, backward, clipping, AdamW), median run")
PY
