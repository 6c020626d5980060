#!/usr/bin/env bash
# The CLI on both devices, on the embedded model (run on the GPU machine after
# scripts/device_build.sh, from the repository root): calibrate, eval (full, searched, uniform 1/4)
# and generate with --device cuda and cpu (DEVICES="cuda" for one), wall times, outputs to $OUT.
set -uo pipefail
B=${B:-build/indexcache}
O=${OUT:-/tmp/cli-check}
mkdir -p "$O"
searched=${SEARCHED:-FSFSSFSSSSSS}
run() {  # name, args...
  local name=$1; shift
  local t0=$EPOCHREALTIME
  "$B" "$@" >"$O/$name.txt" 2>"$O/$name.err"
  local rc=$?
  awk -v n="$name" -v rc="$rc" -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%-16s rc %d  %.2f s\n", n, rc, b - a }' |
    tee -a "$O/times.txt"
}
for dev in ${DEVICES:-cuda cpu}; do
  run "calibrate-$dev" calibrate --device "$dev" --out "/tmp/cal-$dev"
  run "eval-$dev" eval --device "$dev" --data data/heldout.txt --plan full --plan "$searched" --plan 1/4 --json
  run "generate-$dev" generate --device "$dev" -p "Once upon a time" -n 48 --temp 0
done
grep -H "^plan " "$O"/calibrate-*.txt
tail -n 2 "$O"/generate-*.txt
grep -H '"loss"\|"plan"' "$O"/eval-*.txt | head -12
