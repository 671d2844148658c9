#!/usr/bin/env bash
# Runs a set of run configs one after another and prints a table of final validation loss,
# parameters and tokens/s: the CS336 ablations on the bundled sample (configs/ablations/).
#   scripts/ablate.sh [CONFIG.json ...] [-- TRAIN FLAGS]      default: configs/ablations/*.json
# e.g. scripts/ablate.sh configs/ablations/{baseline,nope}.json -- --steps 200 --device cpu
# Needs the sample's token files (scripts/main.sh writes them to runs/sample/). Each run goes to its
# config's out_dir, replaced if it exists.
set -euo pipefail
cd "$(dirname "$0")/.."
configs=() flags=()
while [[ $# -gt 0 && "$1" != "--" ]]; do configs+=("$1"); shift; done
[[ "${1:-}" == "--" ]] && shift && flags=("$@")
[[ ${#configs[@]} -gt 0 ]] || configs=(configs/ablations/*.json)
bin=${SCRATCHLM:-build/scratchlm}
[[ -x "$bin" ]] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build -j "$(nproc)" --target scratchlm; }
[[ -f runs/sample/train.bin ]] || { echo "ablate: runs/sample/train.bin is missing: run scripts/main.sh first" >&2; exit 1; }
rows=()
for cfg in "${configs[@]}"; do
  out=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["out_dir"])' "$cfg")
  rm -rf "$out"
  echo "== $cfg"
  log=$("$bin" train --config "$cfg" "${flags[@]}" 2>&1 | tee /dev/stderr) || { echo "ablate: $cfg failed" >&2; exit 1; }
  params=$(sed -n 's/^model: \([0-9]*\) parameters.*/\1/p' <<<"$log")
  rows+=("$(python3 - "$cfg" "$out/metrics.jsonl" "$params" <<'PY'
import json, sys
cfg, metrics, params = sys.argv[1], sys.argv[2], sys.argv[3]
recs = [json.loads(l) for l in open(metrics)]
val = [r for r in recs if "val_loss" in r][-1]
tps = [r["tokens_per_s"] for r in recs if "tokens_per_s" in r]
tps.sort()
print(f"{cfg.split('/')[-1].removesuffix('.json'):<14} {int(params):>10,} {val['val_loss']:>9.4f} {tps[len(tps) // 2]:>11,.0f}")
PY
)")
done
printf '\n%-14s %10s %9s %11s\n' config parameters "val loss" "tokens/s"
printf '%s\n' "${rows[@]}"
