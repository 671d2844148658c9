#!/usr/bin/env bash
# Stages a build made here for the GPU machine. The device tool carries at most 64 MiB, and each
# program links OpenBLAS's kernels for every CPU statically (~25 MB apiece), so the build is
# copied without object files, static libraries and CMake's scratch files and packed with xz
# (about 7 MB): .device/BUILD_DIR.tar.xz.
#   scripts/stage_device.sh [BUILD_DIR]      then carry .device/ and run
#   scripts/device_check.sh .device/BUILD_DIR.tar.xz     on the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
stage=".device/$build"
rm -rf "$stage" "$stage.tar.xz"
mkdir -p .device
cp -a "$build" "$stage"
find "$stage" \( -name '*.o' -o -name '*.a' -o -name '*.o.d' \) -delete
rm -rf "$stage/CMakeFiles"
tar -C .device -cJf "$stage.tar.xz" "$build"
rm -rf "$stage"
ls -la "$stage.tar.xz"
