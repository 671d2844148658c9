#!/usr/bin/env bash
# Flash attention side by side on one GPU, in one run: scratchlm_bench_attention (ours: forward and
# backward, causal, bf16, median of 20) and PyTorch's scaled_dot_product_attention with its
# FlashAttention-2 and cuDNN backends (torch_sdpa.py, do_bench medians), at issue 5's shapes.
#   bench/attention/run.sh        BENCH_BUILD selects the build (default build),
#                                 TORCH_PYTHON the peer's python (default python3)
# Prints the raw lines, then a table of forward + backward ms and our speed-up over each backend.
set -uo pipefail
cd "$(dirname "$0")/../.."
build=${BENCH_BUILD:-build}
python=${TORCH_PYTHON:-python3}
ours=$(mktemp) peer=$(mktemp)
status=0
"$build/scratchlm_bench_attention" | tee "$ours" || status=1
PYTHONUNBUFFERED=1 "$python" bench/attention/torch_sdpa.py | tee "$peer" || status=1
"$python" - "$ours" "$peer" <<'PY'
import json, re, sys
ours = {}
for line in open(sys.argv[1]):
    m = re.match(r"\((\d+),(\d+),(\d+),(\d+),(\d+)\) 0 0\s+([\d.]+)\s+[\d.]+\s+([\d.]+)", line)
    if m and m.group(3) == m.group(4):   # plain multi-head rows: (B,T,H,Hkv,D) W=0 c=0
        B, T, H, _, D = (int(m.group(i)) for i in range(1, 6))
        ours[(B, H, T, D)] = (float(m.group(6)), float(m.group(7)))
peer = {}
for line in open(sys.argv[2]):
    if line.startswith("{"):
        r = json.loads(line)
        if "error" not in r:
            peer[(r["B"], r["H"], r["T"], r["D"], r["backend"])] = (r["fwd_ms"], r["fwd_bwd_ms"])
print(f"\n{'shape (B,H,T,D) causal':<24} {'ours fwd':>8} {'ours f+b':>8} {'FA2 f+b':>8} {'cuDNN f+b':>9} {'vs FA2':>7} {'vs cuDNN':>8}")
for key in [(1, 16, 16384, 64), (32, 16, 256, 32), (32, 12, 1024, 64), (8, 16, 4096, 128)]:
    if key not in ours:
        continue
    f, b = ours[key]
    fa = peer.get(key + ("flash_attention",), (None, None))[1]
    cu = peer.get(key + ("cudnn_attention",), (None, None))[1]
    ratio = lambda p: f"{p / (f + b):.2f}x" if p else "-"
    fmt = lambda p: f"{p:.3f}" if p else "-"
    print(f"{str(key):<24} {f:8.3f} {f + b:8.3f} {fmt(fa):>8} {fmt(cu):>9} {ratio(fa):>7} {ratio(cu):>8}")
PY
exit $status
