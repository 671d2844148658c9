#!/usr/bin/env bash
# Stages a build made here for the GPU machine (the device tool carries at most 64 MiB): copies
# BUILD_DIR (default build/, configured with CUDA) into .device/BUILD_DIR without object files and
# static libraries, which the tests and benchmarks do not need at run time.
#   scripts/stage_device.sh [BUILD_DIR]      then carry .device/ and run scripts/device_check.sh .device/BUILD_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
rm -rf ".device/$build"
mkdir -p .device
cp -a "$build" ".device/$build"
find ".device/$build" \( -name '*.o' -o -name '*.a' -o -name '*.o.d' \) -delete
du -sh ".device/$build"
