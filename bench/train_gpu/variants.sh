#!/usr/bin/env bash
# GPU training speed of the architecture variants (issue 6) against the default model, same GPU,
# one run: scratchlm_bench_gpu (bf16, 30 steps, median step) on ts-17M (batch 128 x 256) with one
# variant field changed at a time. Prints JSON lines, then a table: tokens/s, the ratio to the
# default, and the model's own training FLOP rate (accounting.h's FLOPs per token, which count what
# each variant computes: a window's band, the routed experts) against the default's: a variant
# "costs what its FLOPs say" when its FLOP rate is near the default's.
#   bench/train_gpu/variants.sh        BENCH_BUILD selects the build (default build)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${BENCH_BUILD:-build}
dir=$(mktemp -d)
out="$dir/results.jsonl"
python3 - "$dir" <<'PY'
import json, sys
base = json.load(open("bench/train_gpu/configs/ts-17M.json"))
variants = {
    "default": {},
    "gqa_4kv": {"num_kv_heads": 4},
    "mqa": {"num_kv_heads": 1},
    "window_64": {"attention_window": 64},
    "window_64_every_2_full": {"attention_window": 64, "full_attention_every": 2},
    "qk_norm": {"qk_norm": True},
    "layernorm": {"norm": "layernorm"},
    "post_norm": {"norm_placement": "post"},
    "mlp_silu_4x": {"ffn": "mlp", "activation": "silu", "d_ff": 2048},
    "parallel": {"block": "parallel"},
    "tied": {"tie_embeddings": True},
    "z_loss_softcap": {"z_loss": 1e-4, "logit_softcap": 30.0},
    "moe_8e_top2": {"moe": {"num_experts": 8, "top_k": 2, "d_ff_expert": 1344, "capacity_factor": 1.25}},
}
for name, fields in variants.items():
    cfg = json.loads(json.dumps(base))
    cfg["model"].update(fields)
    json.dump(cfg, open(f"{sys.argv[1]}/{name}.json", "w"))
PY
for f in "$dir"/*.json; do
  name=$(basename "$f" .json)
  "$build/scratchlm_bench_gpu" "$f" --steps 30 2>/dev/null | sed "s|\"config\":\"[^\"]*\"|\"config\":\"$name\"|" | tee -a "$out" \
    || echo "{\"config\":\"$name\",\"error\":\"failed\"}" | tee -a "$out"
done
python3 - "$out" <<'PY'
import json, sys
rows = {r["config"]: r for r in map(json.loads, open(sys.argv[1]))}
base = rows.get("default")
print(f"\n{'variant':<24} {'tokens/s':>10} {'vs default':>10} {'ms/step':>8} {'model TFLOP/s':>13} {'vs default':>10} {'peak GiB':>8}")
for name, r in rows.items():
    if "error" in r:
        print(f"{name:<24} failed"); continue
    ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
    fratio = f"{r['model_tflops'] / base['model_tflops']:.2f}x" if base else "-"
    print(f"{name:<24} {r['tokens_per_s']:>10.0f} {ratio:>10} {r['ms_per_step']:>8.2f} {r['model_tflops']:>13.1f} {fratio:>10} {r['max_mem_gb']:>8.2f}")
PY
