#!/usr/bin/env bash
# Runs the wgmma attention lab (bench/attention/wgmma_lab.cu) on the GPU machine: every stage in
# its own process under a timeout (a trap in one kernel kills only that process's CUDA context),
# a failing stage run again with --debug, full logs under $OUT/wgmma, a short digest on stdout with
# the timing table last.
#   bench/attention/wgmma_lab.sh [LAB_BINARY] [STAGES]
#     LAB_BINARY  default: build/scratchlm_wgmma_lab, else .device/build/scratchlm_wgmma_lab
#                 (the binary alone suffices: it needs only libstdc++; carry build/scratchlm_wgmma_lab)
#     STAGES      comma list of info,gemm,tma,pipe,fwd,time,bpipe,bwd,btime (default: all, in that order)
# Built here with: cmake --build build -j 2 --target scratchlm_wgmma_lab
set -uo pipefail
cd "$(dirname "$0")/../.."
lab=${1:-}
if [[ -z "$lab" ]]; then
  if [[ -x build/scratchlm_wgmma_lab ]]; then lab=build/scratchlm_wgmma_lab
  else
    [[ -d .device/build || ! -f .device/build.tar.xz ]] || tar -C .device -xJf .device/build.tar.xz
    lab=.device/build/scratchlm_wgmma_lab
  fi
fi
what=${2:-info,gemm,tma,pipe,fwd,time,bpipe,bwd,btime}
out=${OUT:-/tmp/scratchlm-gpu}/wgmma
mkdir -p "$out"
[[ -x "$lab" ]] || { echo "no lab binary at $lab"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader 2>&1 | head -2
status=0

# run NAME TIMEOUT ARGS...: one process; digest = its FAIL/ERROR/WATCHDOG/SUMMARY lines; on failure
# the same command again with --debug (first wrong elements) into NAME.debug.log.
run() {
  local name=$1 limit=$2
  shift 2
  timeout "$limit" "$lab" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  [[ $rc -eq 124 ]] && echo "[$name] TIMED OUT after ${limit}s" >> "$out/$name.log"
  grep -E "SUMMARY|FAIL|ERROR|WATCHDOG|TIMED OUT|context lost" "$out/$name.log" | cut -c1-300 | head -12
  echo "[$name] rc=$rc  ($(grep -c ' PASS' "$out/$name.log") PASS lines; log $out/$name.log)"
  if [[ $rc -ne 0 ]]; then
    status=1
    if [[ " $* " != *" time "* && " $* " != *" btime "* && " $* " != *" info "* ]]; then
      timeout "$limit" "$lab" "$@" --debug > "$out/$name.debug.log" 2>&1
      grep -E "^    " "$out/$name.debug.log" | head -16
    fi
  fi
}

has() { [[ ",$what," == *,$1,* ]]; }

if has info; then
  timeout 60 "$lab" info 2>&1 | tee "$out/info.log" | cut -c1-200
fi
has gemm && run gemm 120 gemm
has tma && run tma 120 tma
has pipe && run pipe 180 pipe
if has fwd; then
  for v in d64_wg2_ov d64_wg3_ov d64_wg2_seq d128_wg2_ov d128_wg2_seq d32_wg3_ov d32_wg2_ov; do
    run "fwd_$v" 300 fwd --variant "$v"
  done
  # One worst line per variant: the largest error ratio against the bound is in the log; here the
  # first two PASS lines of the headline head dim as a sample of what PASS looks like.
  grep -h " PASS" "$out"/fwd_d64_wg2_ov.log 2>/dev/null | head -2 | cut -c1-300
fi
if has time; then
  timeout 600 "$lab" time > "$out/time.log" 2>&1
  rc=$?
  [[ $rc -ne 0 ]] && status=1
  grep -E "ERROR|FAIL|WATCHDOG|context lost" "$out/time.log" | cut -c1-300 | head -8
  sed -n '/TABLE/,$p' "$out/time.log" | cut -c1-250
  echo "[time] rc=$rc"
fi
has bpipe && run bpipe 180 bpipe
if has bwd; then
  for v in d64_m64_n128 d64_m64_n64 d64_m64_n64_q3 d64_m64_n128_s3 d128_m64_n64; do
    run "bwd_$v" 420 bwd --variant "$v"
  done
  # A sample of what PASS looks like (errors of ours and of the mma kernel, per gradient).
  grep -h " PASS" "$out"/bwd_d64_m64_n128.log 2>/dev/null | head -2 | cut -c1-330
fi
if has btime; then
  timeout 600 "$lab" btime > "$out/btime.log" 2>&1
  rc=$?
  [[ $rc -ne 0 ]] && status=1
  grep -E "ERROR|FAIL|WATCHDOG|context lost|^    far" "$out/btime.log" | cut -c1-300 | head -8
  sed -n '/TABLE/,$p' "$out/btime.log" | cut -c1-260
  echo "[btime] rc=$rc"
fi
exit $status
