#!/usr/bin/env bash
# Tokenizer benchmarks, side by side on this machine in one run: scratchlm against Hugging Face tokenizers
# (byte-level BPE training) and tiktoken (GPT-2 encoding), plus id-identity and HF tokenizer.json checks.
#
#   bench/tokenizer/run.sh [--corpus PATH] [--threads N] [--reps R] [--slice-mb M] [--scratchlm BIN]
#                          [--skip-train] [--interop-mb M] [--quiet-wait S]
#
# Defaults: corpus bench/out/gutenberg.txt (decompressed from shared/data/en/gutenberg-en-200MB.txt.gz when
# missing), N = nproc, R = 3, M = 100 (the encoding slice). Without --scratchlm, it builds the program
# (Release, CPU only: the tokenizer has no CUDA code) in build-bench/, apart from the developers' build/.
# Prints every repetition, the medians and the ratios; writes JSON lines to bench/out/tokenizer-results.jsonl.
# Exits 1 when an identity check (tiktoken ids, HF tokenizer.json ids) fails.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
shared="${SCRATCHLM_SHARED:-$repo/../shared}"
out="$repo/bench/out"
corpus="$out/gutenberg.txt"
threads="$(nproc)"
scratchlm=""
pass=()
command="bench/tokenizer/run.sh$( (($#)) && printf ' %q' "$@"; true)"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --corpus) corpus="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --scratchlm) scratchlm="$2"; shift 2 ;;
    --reps|--slice-mb|--interop-mb|--vocab-size|--quiet-wait) pass+=("$1" "$2"); shift 2 ;;
    --skip-train) pass+=("$1"); shift ;;
    -h|--help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"

"$repo/bench/tokenizer/setup_venv.sh"

if [[ -z "$scratchlm" ]]; then
  cmake -S "$repo" -B "$repo/build-bench" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER= >/dev/null
  cmake --build "$repo/build-bench" -j "$(nproc)" --target scratchlm >/dev/null
  scratchlm="$repo/build-bench/scratchlm"
fi

if [[ ! -s "$corpus" ]]; then
  [[ "$corpus" == "$out/gutenberg.txt" ]] || { echo "run.sh: no corpus at $corpus" >&2; exit 2; }
  echo "decompressing the corpus into $corpus"
  gzip -dc "$shared/data/en/gutenberg-en-200MB.txt.gz" > "$corpus.tmp" && mv "$corpus.tmp" "$corpus"
fi

exec "$repo/bench/.venv/bin/python" "$repo/bench/tokenizer/bench.py" --corpus "$corpus" --threads "$threads" \
  --scratchlm "$scratchlm" --shared "$shared" --out "$out" --repo "$repo" --command "$command" "${pass[@]}"
