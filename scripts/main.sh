#!/usr/bin/env bash
# The main job, end to end on the bundled sample corpus (data/sample): build, train a BPE
# tokenizer, tokenize the corpus, and report vocabulary size, compression ratio and throughput.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target scratchlm
bin=build/scratchlm
run=runs/sample
mkdir -p "$run"

echo "== 1. train a byte-level BPE tokenizer (vocab 4096) on data/sample/tinystories_train.txt"
"$bin" tokenizer train --input data/sample/tinystories_train.txt --vocab-size 4096 \
  --special-token '<|endoftext|>' --out "$run/tokenizer"

echo "== 2. tokenize the train and validation text into token files"
"$bin" tokenize --tokenizer "$run/tokenizer" --input data/sample/tinystories_train.txt --out "$run/train.bin"
"$bin" tokenize --tokenizer "$run/tokenizer" --input data/sample/tinystories_valid.txt --out "$run/valid.bin"

echo "== 3. round trip: decode the validation tokens and compare with the original text"
"$bin" tokenizer decode --tokenizer "$run/tokenizer" --input "$run/valid.bin" > "$run/valid.decoded.txt"
cmp data/sample/tinystories_valid.txt "$run/valid.decoded.txt" && echo "round trip: identical"
echo "== done: outputs in $run/"
