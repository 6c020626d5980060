#!/usr/bin/env bash
# The CLI on both devices, on the embedded model (run on the GPU machine after
# scripts/device_build.sh, from the repository root): calibrate, eval (full, searched, uniform 1/4)
# and generate with --device cpu and --device cuda, wall times from `date`, outputs to $OUT.
set -uo pipefail
B=${B:-build/indexcache}
O=${OUT:-/tmp/cli-check}
mkdir -p "$O"
searched=${SEARCHED:-FSFSSFSSSSSS}
run() {  # name, args...
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  "$B" "$@" >"$O/$name.txt" 2>"$O/$name.err"
  local rc=$?
  printf '%-14s rc %d  %.2f s\n' "$name" "$rc" "$(echo "$(date +%s.%N) - $t0" | bc)" | tee -a "$O/times.txt"
}
for dev in cuda cpu; do
  run "calibrate-$dev" calibrate --device "$dev" --out "/tmp/cal-$dev"
  run "eval-$dev" eval --device "$dev" --plan full --plan "$searched" --plan 1/4 --json
  run "generate-$dev" generate --device "$dev" -p "Once upon a time" -n 48 --temp 0
done
grep -h "^plan\|F layers\|plan " "$O"/calibrate-*.txt | head -20
tail -n 3 "$O"/generate-*.txt
