#!/bin/bash
# Runs the training pipeline of the embedded default model on the GPU machine (one H200).
#
#   scripts/train/run_device.sh start     check the machine, start the pipeline in the background
#                                         (setsid: it outlives the call), then wait up to WAIT_S
#   scripts/train/run_device.sh collect   wait (up to WAIT_S) until the pipeline is finished, then copy
#                                         the model and a report to $OUT; says NOT DONE if it is not
#   scripts/train/run_device.sh status    print progress and return at once
#
# Device calls (see scripts/train/README.md): 1) start, with carry ["corpus"], timeout 600;
# 2) collect, timeout 600, issued right after 1 returns (the machine goes back ~30 s after a call);
# 3) collect again only if 2 printed NOT DONE.
#
# Environment knobs: MIN_PRETRAIN (10), MIN_WARMUP (1.5), MIN_SPARSE (4) minutes; WAIT_S (550);
# WORK (/tmp/work); NAME (dsa-mini); TRAIN_ARGS (extra train.py flags); PY (python3);
# INIT_MODEL (a checkpoint folder of the repo, e.g. models/dsa-mini: pre-training continues from it
# instead of starting from random weights).
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-/tmp/work}
NAME=${NAME:-dsa-mini}
WAIT_S=${WAIT_S:-550}
MIN_PRETRAIN=${MIN_PRETRAIN:-10}
MIN_WARMUP=${MIN_WARMUP:-1.5}
MIN_SPARSE=${MIN_SPARSE:-4}
TRAIN_ARGS=${TRAIN_ARGS:-}
INIT_MODEL=${INIT_MODEL:-}
PY=${PY:-python3}          # local tests: PY=/opt/ref/py ALLOW_CPU=1 TRAIN_ARGS=--tiny
ALLOW_CPU=${ALLOW_CPU:-0}
export PYTHONUNBUFFERED=1
mode=${1:-status}
T0=$(date +%s)

running() { [ -f "$WORK/pipeline.pid" ] && kill -0 "$(cat "$WORK/pipeline.pid")" 2>/dev/null; }
finished() { [ -f "$WORK/status.json" ] && grep -q '"state": "finished"' "$WORK/status.json"; }

progress() {
  echo "--- $(date +%H:%M:%S) pipeline $(running && echo running || echo 'not running'), $(finished && echo finished || echo 'not finished')"
  [ -f "$WORK/train.log" ] && grep -v -E 'Loading weights|^\s*$' "$WORK/train.log" | tail -n "${1:-3}"
}

wait_loop() {
  local last=0
  while true; do
    finished && return 0
    running || return 1
    local now=$(( $(date +%s) - T0 ))
    [ "$now" -ge "$WAIT_S" ] && return 2
    if [ $(( now - last )) -ge 60 ]; then progress 2; last=$now; fi
    sleep 10
  done
}

collect() {
  local out=${OUT:-$WORK/out}
  mkdir -p "$out/model" "$WORK/report"
  local m="$WORK/export/$NAME"
  # the report: logs, curves, evaluation, verification (one tarball, small files)
  rm -rf "$WORK/report"/*
  cp "$WORK"/train.log "$WORK"/status.json "$WORK"/log_*.json "$WORK"/export.json "$WORK"/env.txt \
     "$WORK/report/" 2>/dev/null
  [ -d "$WORK/eval" ] && cp "$WORK"/eval/* "$WORK/report/" 2>/dev/null
  local nshard=0
  if [ -d "$m" ]; then
    nshard=$(ls "$m"/*.safetensors 2>/dev/null | wc -l)
    cp "$m"/*.safetensors "$out/model/"
    local small="$m/config.json $m/generation_config.json"
    [ -f "$m/model.safetensors.index.json" ] && small="$small $m/model.safetensors.index.json"
    if [ "$nshard" -le 4 ]; then cp $small "$out/model/"; else cp $small "$WORK/report/"; fi
  fi
  tar -C "$WORK" -czf "$out/report.tar.gz" report
  echo "--- files in \$OUT ($nshard weight shards):"
  (cd "$out" && find . -type f -printf '%p %s\n' | sort)
}

case "$mode" in
start)
  if running; then
    echo "pipeline already running"
  elif finished; then
    echo "pipeline already finished: call collect"
  else
    for f in train.bin.xz heldout.bin synth_kit.npz; do
      [ -f "$ROOT/corpus/$f" ] || { echo "error: corpus/$f missing (carry [\"corpus\"] in this call)"; exit 2; }
    done
    [ -f "$ROOT/data/heldout.txt" ] || { echo "error: data/heldout.txt missing"; exit 2; }
    mkdir -p "$WORK"
    rm -rf "$WORK/corpus" "$WORK/data" "$WORK/code"
    cp -r "$ROOT/corpus" "$WORK/corpus"; cp -r "$ROOT/data" "$WORK/data"; cp -r "$ROOT/scripts/train" "$WORK/code"
    [ -f "$WORK/corpus/tokenizer.json" ] || cp "$ROOT/models/dsa-mini/tokenizer.json" "$ROOT/models/dsa-mini/tokenizer_config.json" "$WORK/corpus/"
    if [ -n "$INIT_MODEL" ]; then
      [ -f "$ROOT/$INIT_MODEL/config.json" ] || { echo "error: INIT_MODEL $INIT_MODEL has no config.json"; exit 2; }
      rm -rf "$WORK/init"; cp -r "$ROOT/$INIT_MODEL" "$WORK/init"
      TRAIN_ARGS="--init-from $WORK/init $TRAIN_ARGS"
    fi
    {
      date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
      $PY -c 'import sys, torch, transformers, tokenizers, safetensors, numpy; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__, "tokenizers", tokenizers.__version__, "numpy", numpy.__version__)'
      $PY -c 'import matplotlib; print("matplotlib", matplotlib.__version__)' 2>&1 | tail -1
      (cd "$ROOT" && git rev-parse HEAD 2>/dev/null && git status --short 2>/dev/null | head -20)
    } > "$WORK/env.txt" 2>&1
    cat "$WORK/env.txt"
    $PY -c "import torch, transformers, tokenizers, safetensors; assert torch.cuda.is_available() or $ALLOW_CPU" \
      || { echo "error: python3 lacks torch+CUDA, transformers, tokenizers or safetensors"; exit 1; }
    cd "$WORK"
    setsid nohup $PY -u "$WORK/code/train.py" --stage all --work "$WORK" --corpus "$WORK/corpus" \
      --data "$WORK/data" --name "$NAME" --minutes-pretrain "$MIN_PRETRAIN" --minutes-warmup "$MIN_WARMUP" \
      --minutes-sparse "$MIN_SPARSE" $TRAIN_ARGS > "$WORK/train.log" 2>&1 < /dev/null &
    echo $! > "$WORK/pipeline.pid"
    echo "started pipeline pid $(cat "$WORK/pipeline.pid") at $(date +%H:%M:%S): pretrain $MIN_PRETRAIN + warmup $MIN_WARMUP + sparse $MIN_SPARSE min, then export, verify, eval"
    sleep 45
    progress 15
  fi
  wait_loop; rc=$?
  progress 12
  if [ $rc -eq 0 ]; then collect; echo "DONE"; fi
  [ $rc -eq 1 ] && { echo "PIPELINE STOPPED before finishing: see the log"; collect; }
  [ $rc -eq 2 ] && echo "NOT DONE: call 'scripts/train/run_device.sh collect' now"
  exit 0
  ;;
collect)
  wait_loop; rc=$?
  progress 40
  collect
  case $rc in
    0) echo "DONE" ;;
    1) echo "PIPELINE STOPPED before finishing (status above); whatever it exported is in \$OUT" ;;
    2) echo "NOT DONE: call 'scripts/train/run_device.sh collect' again" ;;
  esac
  exit 0
  ;;
status)
  progress 30
  [ -f "$WORK/status.json" ] && cat "$WORK/status.json"
  exit 0
  ;;
*)
  echo "usage: $0 start|collect|status"; exit 2 ;;
esac
