#!/usr/bin/env bash
# GPU generation throughput, side by side in one run on one GPU: scratchlm's decoder
# (scratchlm_bench_generate: our kernels with and without programmatic dependent launch, and the
# cuBLASLt step; one run with the host waiting for every token) against the strongest plain-PyTorch
# decoder (torch_decode.py: static KV cache, step compiled into a CUDA graph) and Hugging Face
# transformers' generate (hf_generate.py), same shapes, random weights, 16-token prompts, 256 new
# tokens, greedy.
#   bench/generate/run.sh [CONFIGS [BATCHES]]     defaults ts-17M,gpt2s-124M and 1,32
# BENCH_BUILD selects the build (default build); TORCH_PYTHON the peers' python (default python3,
# which holds PyTorch and transformers on the GPU machine: nothing is installed then; only where
# one of them cannot be imported, bench/.venv-generate is made with --system-site-packages and the
# missing ones installed into it); PROFILE=1 adds the time per kernel of one step (stderr).
# Prints JSON lines, then a table: decode tokens/s (prefill excluded, as torch_decode.py counts)
# and total tokens/s (the whole call, as generate is timed), the ratios to each peer, and the time
# per token against the memory floor (weight bytes, and weights plus the KV cache at the mean
# length, over the device-to-device copy bandwidth measured in the same run).
set -uo pipefail
cd "$(dirname "$0")/../.."
build=${BENCH_BUILD:-build}
python=${TORCH_PYTHON:-python3}
configs=${1:-ts-17M,gpt2s-124M}
batches=${2:-1,32}
out=$(mktemp)
status=0
missing=$("$python" -c 'import importlib.util as u; print(" ".join(m for m in ("torch", "transformers") if u.find_spec(m) is None))' 2>/dev/null || echo "torch transformers")
if [[ -n "$missing" ]]; then
  venv=bench/.venv-generate
  [[ -x "$venv/bin/python" ]] || "$python" -m venv --system-site-packages "$venv"
  echo "bench/generate: $missing not importable by $python; installing into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $missing || status=1
  python="$venv/bin/python"
fi
"$python" -c 'import torch, transformers; print(f"peers: torch {torch.__version__}, transformers {transformers.__version__}")' || status=1
"$build/scratchlm_bench_generate" --configs "$configs" --batches "$batches" --gemm own,cublas --pdl 0,1 --runs 5 \
  --profile "${PROFILE:-0}" | tee -a "$out" || status=1
# The host waiting for each token (one round trip per token) at batch 1.
"$build/scratchlm_bench_generate" --configs "$configs" --batches 1 --gemm own --pdl 0 --in-flight 1 --runs 3 \
  | grep -v copy_bandwidth | tee -a "$out" || status=1
PYTHONUNBUFFERED=1 PYTHONPATH=bench/train_gpu "$python" bench/generate/torch_decode.py --configs "$configs" \
  --batches "$batches" 2> "$out.torch_decode.err" | tee -a "$out" || { echo "torch_decode.py failed:"; tail -5 "$out.torch_decode.err"; status=1; }
PYTHONUNBUFFERED=1 "$python" bench/generate/hf_generate.py --configs "$configs" --batches "$batches" \
  2> "$out.hf.err" | tee -a "$out" || { echo "hf_generate.py failed:"; tail -5 "$out.hf.err"; status=1; }
"$python" - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
bw = next((r["bytes_per_s"] for r in rows if r.get("kind") == "copy_bandwidth"), None)
ours = [r for r in rows if r.get("impl") == "scratchlm"]
peer = {(r["peer"], r["config"], r["batch"]): r["tokens_per_s"] for r in rows if "peer" in r}
goals = {("ts-17M", 1): 20000, ("ts-17M", 32): 200000, ("gpt2s-124M", 1): 8000}
print(f"\ndevice-to-device copy bandwidth: {bw / 1e12:.2f} TB/s (bytes read + written)" if bw else "\nno bandwidth measured")
print("us/token: decode time per token; floors per token: 'floor 4.8' the bf16 weights one step reads at 4.8 TB/s,\n"
      "'floor w' the same at the copy bandwidth measured here, 'floor w+kv' plus the KV cache at the mean length;\n"
      "'of floor' = floor w+kv / us/token")
print(f"{'config':<11} {'B':>3} {'step':<22} {'decode tok/s':>12} {'total tok/s':>11} {'vs compiled':>11} {'vs HF':>7}"
      f" {'us/token':>8} {'floor 4.8':>9} {'floor w':>8} {'floor w+kv':>10} {'of floor':>8}")
for r in ours:
    c, B = r["config"], r["batch"]
    step = ("own" if r["gemm"] == "own" else "cuBLASLt") + (" +PDL" if r["pdl"] else "") + \
           (f" wait/token" if r["in_flight"] == 1 else "")
    comp, hf = peer.get(("torch-compiled-static-cache", c, B)), peer.get(("hf-generate", c, B))
    vs_c = f"{r['decode_tokens_per_s'] / comp:.1f}x" if comp else "-"
    vs_h = f"{r['total_tokens_per_s'] / hf:.0f}x" if hf else "-"
    fw, fwc = r["floor_weights_us_per_step"] / B, r["floor_weights_cache_us_per_step"] / B
    f48 = r["weight_bytes"] / 4.8e12 * 1e6 / B   # the weights at H200's nominal 4.8 TB/s
    print(f"{c:<11} {B:>3} {step:<22} {r['decode_tokens_per_s']:>12,.0f} {r['total_tokens_per_s']:>11,.0f} {vs_c:>11} {vs_h:>7}"
          f" {r['us_per_token']:>8.2f} {f48:>9.2f} {fw:>8.2f} {fwc:>10.2f} {100 * fwc / r['us_per_token']:>7.0f}%")
for (p, c, B), t in sorted(peer.items()):
    print(f"{c:<11} {B:>3} {p:<22} {t:>12,.0f}")
for (c, B), g in goals.items():
    best = max((r["decode_tokens_per_s"] for r in ours if r["config"] == c and r["batch"] == B), default=None)
    if best is not None:
        print(f"goal {c} batch {B}: {g:,} tokens/s; best ours {best:,.0f}: {'met' if best >= g else 'NOT met'}")
PY
exit $status
