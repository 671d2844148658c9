#!/usr/bin/env bash
# The main job, end to end on the bundled sample corpus (data/sample, TinyStories) (on the GPU when the machine has one, else the CPU):
# build, train a BPE tokenizer, tokenize the corpus, train a small Transformer LM (configs/sample.json;
# the loss falls, validation loss is reported), and generate text from it. About two minutes on two
# cores. Outputs in runs/sample/.
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

echo "== 4. train a Transformer LM (configs/sample.json) on the GPU if there is one, else the CPU"
rm -rf "$run/model"   # a fresh run each time (train refuses to overwrite checkpoints)
"$bin" train --config configs/sample.json --out_dir "$run/model"

echo "== 5. generate from the trained model"
"$bin" generate --checkpoint "$run/model" --tokenizer "$run/tokenizer" --prompt "Once upon a time" \
  --max-new-tokens 80 --temperature 0.8 --top-p 0.95 --seed 1
echo "== done: outputs in $run/ (metrics: $run/model/metrics.jsonl)"
