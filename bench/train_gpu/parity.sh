#!/usr/bin/env bash
# CPU fp32 against GPU bf16 training on real tokens (Gutenberg, our 10k tokenizer; data from
# scripts/prepare_gutenberg.sh): the same run config, seed and batches on both devices; the
# validation losses must agree within 1% at every evaluation (400 steps, evaluations every 50).
#   bench/train_gpu/parity.sh          (BENCH_BUILD selects the build; runs/ holds the runs)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${BENCH_BUILD:-build}/scratchlm
cfg=bench/train_gpu/configs/parity-8M.json
rm -rf runs/parity-cpu runs/parity-gpu
"$bin" train --config "$cfg" --device cpu --out_dir runs/parity-cpu | grep -E "^device|val loss|trained"
"$bin" train --config "$cfg" --device cuda --precision bf16 --out_dir runs/parity-gpu | grep -E "^device|val loss|trained"
python3 - <<'PY'
import json, sys
def vals(d): return {r["step"]: r["val_loss"] for r in map(json.loads, open(f"runs/{d}/metrics.jsonl")) if "val_loss" in r}
cpu, gpu = vals("parity-cpu"), vals("parity-gpu")
worst = 0.0
print(f"{'step':>6} {'CPU fp32':>10} {'GPU bf16':>10} {'rel diff':>9}")
for s in sorted(cpu):
    d = abs(gpu[s] - cpu[s]) / cpu[s]; worst = max(worst, d)
    print(f"{s:>6} {cpu[s]:>10.4f} {gpu[s]:>10.4f} {100*d:>8.2f}%")
print(f"largest difference {100*worst:.2f}% (bound 1%): {'PASS' if worst <= 0.01 else 'FAIL'}")
sys.exit(0 if worst <= 0.01 else 1)
PY
