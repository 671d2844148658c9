#!/usr/bin/env bash
# GPU training throughput, side by side in one run on one GPU: scratchlm (bf16; 3 runs, and one with
# recomputation of the feed-forward activations) against the PyTorch
# peer torch_lm.py (eager bf16 and torch.compile bf16, fused AdamW), same model, batch, optimizer.
#   bench/train_gpu/run.sh [CONFIGS]          CONFIGS: comma list, default ts-17M,gpt2s-124M
# BENCH_BUILD selects the build (default build); TORCH_PYTHON the peer's python (default python3,
# which holds PyTorch on the GPU machine). Prints JSON lines, then a table with the ratios.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${BENCH_BUILD:-build}
python=${TORCH_PYTHON:-python3}
configs=${1:-ts-17M,gpt2s-124M}
out=$(mktemp)
for c in ${configs//,/ }; do
  for rep in 1 2 3; do
    "$build/scratchlm_bench_gpu" "bench/train_gpu/configs/$c.json" --steps 30 | sed "s|\"config\":\"[^\"]*\"|\"config\":\"$c\"|" | tee -a "$out"
  done
  "$build/scratchlm_bench_gpu" "bench/train_gpu/configs/$c.json" --steps 30 --recompute 1 | sed "s|\"config\":\"[^\"]*\"|\"config\":\"$c\"|" | tee -a "$out"
  PYTHONUNBUFFERED=1 "$python" bench/train_gpu/torch_lm.py --configs "$c" --modes eager-bf16,compile-bf16 2>/dev/null | tee -a "$out"
done
"$python" - "$out" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {}
for r in rows:
    if "error" in r: print("peer error:", r); continue
    by.setdefault((r["config"], r["mode"]), []).append(r)
print(f"\n{'config':<12} {'mode':<16} {'tokens/s':>11} {'ms/step':>8} {'MFU':>6} {'peak GiB':>9} {'vs compile':>10}")
for cfg in dict.fromkeys(c for c, _ in by):
    comp = by.get((cfg, "compile-bf16"))
    base = comp[0]["tokens_per_s"] if comp else None
    for (c, mode), rs in by.items():
        if c != cfg: continue
        tok = statistics.median(r["tokens_per_s"] for r in rs)
        ms = statistics.median(r["ms_per_step"] for r in rs)
        mfu = statistics.median(r["mfu_vs_989"] for r in rs)
        mem = max(r["max_mem_gb"] for r in rs)
        ratio = f"{tok / base:.2f}x" if base else "-"
        print(f"{c:<12} {mode:<16} {tok:>11,.0f} {ms:>8.2f} {100*mfu:>5.1f}% {mem:>9.2f} {ratio:>10}")
PY
