#!/usr/bin/env bash
# Time to loss: scratchlm (bf16, GPU) and the PyTorch peer (torch.compile bf16, fused AdamW) train
# ts-17M on the same Gutenberg token files with the same schedule (1,500 steps of 128 × 256 tokens,
# lr 1e-3 → 1e-4 cosine, warmup 100, AdamW 0.9/0.95, weight decay 0.1, clip 1), evaluating every
# 250 steps; prints validation loss against training time (evaluation excluded) for both.
#   bench/train_gpu/time_to_loss.sh       (data from scripts/prepare_gutenberg.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${BENCH_BUILD:-build}/scratchlm
python=${TORCH_PYTHON:-python3}
data=.device/data/gutenberg
rm -rf runs/ttl
"$bin" train --config bench/train_gpu/configs/ts-17M-gutenberg.json --out_dir runs/ttl --device cuda | grep -E "val loss|trained"
PYTHONUNBUFFERED=1 "$python" bench/train_gpu/torch_lm.py --configs ts-17M --modes compile-bf16 --train-bin $data/train.bin \
  --val-bin $data/valid.bin --steps 1500 --lr-max 1e-3 --lr-min 1e-4 --warmup 100 --eval-every 250 --eval-batches 10 \
  2>/dev/null > runs/ttl/peer.jsonl
"$python" - <<'PY'
import json
ours = [r for r in map(json.loads, open("runs/ttl/metrics.jsonl")) if "val_loss" in r]
peer = [r for r in map(json.loads, open("runs/ttl/peer.jsonl")) if "val_loss" in r]
ours_at = {r["step"]: r for r in ours}
# The peer's first interval includes torch.compile; its steady interval time estimates compilation.
steady = [b["train_seconds"] - a["train_seconds"] for a, b in zip(peer[1:], peer[2:])]
compile_s = max(0.0, (peer[1]["train_seconds"] - peer[0]["train_seconds"]) - min(steady)) if steady else 0.0
print(f"{'step':>6} {'ours val':>9} {'ours s':>7} {'torch val':>10} {'torch s':>8} {'torch s w/o compile':>20}")
for p in peer:
    o = ours_at.get(p["step"]) or {}
    ts = p["train_seconds"]
    print(f"{p['step']:>6} {o.get('val_loss', float('nan')):>9.4f} {o.get('train_s', 0):>7.2f} {p['val_loss']:>10.4f} {ts:>8.2f} {max(0.0, ts - compile_s):>20.2f}")
print(f"torch.compile's compilation ≈ {compile_s:.1f} s (first interval minus a steady one)")
PY
