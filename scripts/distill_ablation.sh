#!/usr/bin/env bash
# The ablation of issue 14 on the embedded model (docs/distill.md): for uniform 1/2, uniform 1/4 and
# the searched 1/4 plan (docs/calibrate/plan.txt), the training-free plan, `--loss single` and
# `--loss multi` distillation with the same steps and data, scored on data/heldout.txt at 4096
# tokens and on the 4K retrieval set; then calibrate on the multi-distilled uniform 1/4 model.
# Usage: scripts/distill_ablation.sh [OUT]   (env: B, the binary; STEPS, CTX, LR, DATA, WINDOWS)
# Re-running it skips finished distillations and resumes an interrupted one from its state file.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${B:-build/indexcache}
O=${1:-/tmp/distill-ablation}
STEPS=${STEPS:-30} CTX=${CTX:-4096} LR=${LR:-2e-3} DATA=${DATA:-data/distill.txt} WINDOWS=${WINDOWS:-8}
mkdir -p "$O"
declare -A PLAN=([half]=1/2 [quarter]=1/4 [searched]=$(cat docs/calibrate/plan.txt))
timed() {  # name, command...
  local name=$1; shift
  local t0=$EPOCHREALTIME
  "$@" >"$O/$name.txt" 2>"$O/$name.err"
  awk -v n="$name" -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%-28s %8.1f s\n", n, b - a }' | tee -a "$O/times.txt"
}
score() {  # name, eval args...
  local name=$1; shift
  timed "eval-$name" "$B" eval "$@" --ctx "$CTX" --max-windows "$WINDOWS" --data data/heldout.txt \
    --data data/retrieval_4k.jsonl
}
for p in half quarter searched; do
  for l in single multi; do
    d=$O/$p-$l
    if [[ -f $d/model.safetensors ]]; then continue; fi  # done by an earlier run of this script
    again=(--force)
    if [[ -f $d/distill_state.safetensors ]]; then again=(--resume); fi  # an interrupted one: continue it
    timed "distill-$p-$l" "$B" distill --plan "${PLAN[$p]}" --loss "$l" --ctx "$CTX" --steps "$STEPS" --lr "$LR" \
      --data "$DATA" --out "$d" "${again[@]}"
  done
done
score base --plan full --plan 1/2 --plan 1/4 --plan "${PLAN[searched]}"
for p in half quarter searched; do
  for l in single multi; do score "$p-$l" -m "$O/$p-$l"; done
done
timed calibrate-quarter-multi "$B" calibrate -m "$O/quarter-multi" --data data/calibration.txt --ctx "$CTX" --keep-layers 2 \
  --out "$O/calib-quarter-multi" --force
echo "done: $O"
