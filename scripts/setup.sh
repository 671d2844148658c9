#!/usr/bin/env bash
# Installs every Debian package scratchlm needs to build, test and benchmark on the CPU.
# Idempotent: packages already present are left as they are. Run as root (or with sudo).
set -euo pipefail

packages=(
  build-essential cmake pkg-config   # compiler and build
  libgtest-dev                       # tests (GoogleTest through ctest)
  nlohmann-json3-dev                 # JSON: configs, vocab.json, sidecars
  libcli11-dev                       # command-line parsing
  libutf8proc-dev                    # Unicode general categories for the GPT-2 pre-tokenizer
  libopenblas-openmp-dev             # BLAS (OpenMP build) for the CPU model path
  python3 python3-venv               # bench scripts make a virtual environment for the peers
  clang libclang-rt-14-dev           # scripts/fuzz.sh (libFuzzer)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  echo "setup: installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all packages present"
fi
