#!/bin/bash
# Local (CPU) half of the pipeline: corpus -> tokenizer -> token arrays -> synthetic kit -> data/
# (evaluation files, then the distillation set).
# Runs on the developer machine (Debian bookworm, root, Debian archive reachable); ~3 minutes.
#   scripts/train/prepare.sh            (PY defaults to /opt/ref/py: python with tokenizers + numpy)
# Outputs: corpus/ (travels to the GPU machine; git-ignored), data/ (kept in git).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-/opt/ref/py}
WORK=${WORK:-$HOME/.cache/indexcache-corpus}
apt-get update -qq || true
python3 scripts/train/build_corpus.py --out corpus --work "$WORK"
$PY scripts/train/train_tokenizer.py --corpus corpus --work "$WORK" --vocab 8192
$PY scripts/train/synthetic.py build-kit --corpus corpus --work "$WORK"
$PY scripts/train/make_data.py --out data --corpus corpus --work "$WORK"
$PY scripts/train/make_distill.py --out data --work "$WORK" --tokenizer corpus/tokenizer.json
du -sh corpus data
