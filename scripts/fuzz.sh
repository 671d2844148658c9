#!/usr/bin/env bash
# Builds the libFuzzer target for the tokenizer (clang, with ASan+UBSan) and runs it.
#   scripts/fuzz.sh [SECONDS]   (default 60; the corpus is kept in build-fuzz/corpus)
# Not part of CI: it runs until the time is up. Any failure leaves a crash-* file to replay.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
mkdir -p build-fuzz/corpus
cp -n tests/data/cs336/*.txt build-fuzz/corpus/ 2>/dev/null || true
flags="-std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -Isrc"
clang++ $flags fuzz/tokenizer_fuzz.cpp src/tokenizer/{unicode,vocab,tokenizer,special_tokens,chunker}.cpp \
  src/util/files.cpp -lutf8proc -o build-fuzz/tokenizer_fuzz
build-fuzz/tokenizer_fuzz -max_total_time="$seconds" -max_len=4096 -timeout=10 build-fuzz/corpus
