#!/usr/bin/env bash
# The prepared GPU check (issue 20): every rule one short epoch in fp32 and bf16-mixed, project vs plain throughput,
# data.loader=device img/s, 2 pipeline stages on one GPU; synthetic CIFAR-shaped data only; a Markdown report in
# $OUT/gpu_check.md. Sized for <= 8 minutes on one H100/H200 (its 4 steps are stopped after 240, 90, 60 and 90 s).
#
# On a GPU machine that has torch, torchvision, Lightning and torchmetrics but not the rest (the lent machines have no
# network): make the missing pure-Python wheels here first, carry .whl and the tree there, then run this script.
#   bash scripts/gpu_check.sh --wheels          # here: hydra-core, omegaconf, antlr4 runtime, loguru into .whl/
#   bash scripts/gpu_check.sh                   # there: installs .whl/*.whl into /tmp/site if needed, then checks
#   bash scripts/gpu_check.sh --device cpu --quick   # the plumbing on a machine without a GPU (tiny sizes)
# Any other arguments go to scripts/gpu_check.py (--out, --only 1,3, --step-timeout).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

if [ "${1:-}" = "--wheels" ]; then
  pin() { grep -E "^$1==" requirements.txt | cut -d' ' -f1; }
  mkdir -p .whl
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .whl "$(pin hydra-core)" omegaconf==2.3.1 "$(pin loguru)"
  "$PY" -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3  # published as a source archive only
  ls -1 .whl
  exit 0
fi

if ! "$PY" -c "import hydra, loguru, omegaconf" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "error: hydra-core, omegaconf or loguru is missing and there is no .whl/; run 'bash scripts/gpu_check.sh --wheels' where pip works and carry .whl" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec "$PY" scripts/gpu_check.py "$@"
