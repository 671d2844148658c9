#!/usr/bin/env bash
# Creates bench/.venv with the tokenizer peers (tiktoken, Hugging Face tokenizers) at pinned versions.
# Idempotent: reruns only install what is missing or at another version. Prints the versions.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${BENCH_VENV:-$here/../.venv}"
pins=(tiktoken==0.14.0 tokenizers==0.23.3)

[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
have=$("$venv/bin/python" -m pip freeze 2>/dev/null | grep -cixF -f <(printf '%s\n' "${pins[@]}") || true)
if [[ "$have" != "${#pins[@]}" ]]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}"
fi
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("tiktoken", "tokenizers"):
    print(f"{name}=={md.version(name)}")
PY
