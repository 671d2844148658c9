#!/usr/bin/env bash
# Token files for the GPU benchmarks (time to loss) and the CPU-vs-GPU training parity run, from the
# Gutenberg sample in ../shared/data (not in the repository: 200 MB of books):
#   scripts/prepare_gutenberg.sh [OUT_DIR]      (default .device/data/gutenberg, carried to the GPU)
# A 10,000-token BPE tokenizer (the ts-17M vocabulary) trained on the first 20 MB, train.bin from the
# first 50 MB and valid.bin from the next 2 MB (raw uint16 token files).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.device/data/gutenberg}
src=${GUTENBERG:-../shared/data/en/gutenberg-en-200MB.txt.gz}
bin=${SCRATCHLM:-build/scratchlm}
mkdir -p "$out"
zcat "$src" | head -c 52000000 > "$out/text.txt" || true
head -c 50000000 "$out/text.txt" > "$out/train.txt"
tail -c 2000000 "$out/text.txt" > "$out/valid.txt"
head -c 20000000 "$out/train.txt" > "$out/tok_train.txt"
"$bin" tokenizer train --input "$out/tok_train.txt" --vocab-size 10000 --special-token '<|endoftext|>' \
  --out "$out/tokenizer"
"$bin" tokenize --tokenizer "$out/tokenizer" --input "$out/train.txt" --out "$out/train.bin"
"$bin" tokenize --tokenizer "$out/tokenizer" --input "$out/valid.txt" --out "$out/valid.bin"
rm -f "$out/text.txt" "$out/train.txt" "$out/valid.txt" "$out/tok_train.txt"
ls -la "$out"
