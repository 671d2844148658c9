#!/usr/bin/env bash
# Runs on the GPU machine (through the device tool): the test suite from a build made here and
# carried along (build-dev/, configured with CUDA), so the CUDA tests run instead of skipping.
#   scripts/device_check.sh [BUILD_DIR | .device/BUILD_DIR.tar.xz] [TESTS]
# TESTS, a ctest regular expression over the test names (e.g. '^GpuDecod'), runs only those.
# ctest files hold the absolute paths of the machine that configured the build; links make the
# same paths valid here (also for a build staged by scripts/stage_device.sh into .device/).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-dev}
tests=${2:-}
if [[ "$build" == *.tar.xz ]]; then   # packed by scripts/stage_device.sh
  tar -C "$(dirname "$build")" -xJf "$build"
  build=${build%.tar.xz}
fi
configured_root=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt")
if [[ "$configured_root" != "$PWD" && ! -e "$configured_root" ]]; then
  mkdir -p "$(dirname "$configured_root")"
  ln -s "$PWD" "$configured_root"
fi
configured_build=$(sed -n 's/^CMAKE_CACHEFILE_DIR:INTERNAL=//p' "$build/CMakeCache.txt")
if [[ ! -e "$configured_build" ]]; then
  ln -s "$PWD/$build" "$configured_build"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$build/scratchlm" info
ctest --test-dir "$build" --output-on-failure -j 8 ${tests:+-R "$tests"}
