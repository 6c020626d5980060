#!/usr/bin/env bash
# The Session's speed on the GPU machine (run there after scripts/device_build.sh, from the
# repository root), the measurements issue 11 asks for; reports to $OUT. One part per call (each
# fits in a 10-minute device call):
#   ab        the Session beside the GPU runner on glm47flash-dsa, 8 layers, 64K, full and 1/4
#             (prefill and decode, 3 repeats each)
#   full200k  the Session on the whole 47-layer preset at 200K tokens, full and 1/4, 3 repeats
#             (the target: within 3 % of docs/bench/glm47flash-dsa.md, 27.5 / 14.5 s prefill and
#             110 / 146 tok/s decode); ~62 GB of host memory for the random bf16 weights
#   calibrate the greedy search on the preset (12 layers, 16K tokens per window, 2 windows)
set -uo pipefail
B=${B:-build/indexcache}
O=${OUT:-/tmp/session-bench}
mkdir -p "$O"
bench() {  # name, args...
  local name=$1; shift
  local t0=$EPOCHREALTIME
  "$B" bench --device cuda --synthetic glm47flash-dsa --quiet "$@" >"$O/$name.md" 2>"$O/$name.err"
  local rc=$?
  awk -v n="$name" -v rc="$rc" -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%-24s rc %d  %.1f s\n", n, rc, b - a }'
  grep -E "^\| [0-9]" "$O/$name.md" | cut -d"|" -f2-7
  tail -n 3 "$O/$name.err"
}
case ${1:-ab} in
  ab)
    for e in session runner; do
      bench "ab64k-$e" --engine "$e" --layers 8 --ctx 64K --plan full,1/4 --mode prefill,decode --decode-steps 64 --repeat 3
    done ;;
  full200k)
    bench "full200k-session" --engine session --ctx 200000 --plan full,1/4 --mode prefill,decode --decode-steps 64 \
      --repeat 3 ;;
  calibrate)
    bench "calibrate16k" --mode calibrate --layers 12 --ctx 16K --windows 2 ;;
  *) echo "device_session_bench: unknown part '$1' (ab, full200k, calibrate)" >&2; exit 2 ;;
esac
