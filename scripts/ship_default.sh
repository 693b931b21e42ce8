#!/usr/bin/env bash
# Make a checkpoint the shipped default model: export FP32 ONNX, quantize both INT8 files (each
# verifies itself and writes its sidecar), then evaluate all three through the agent's own inference
# code (mirrored, as the agent runs) on FER+ Valid and the held-out test parts. Needs
# `scripts/setup.sh train`, ../shared/data (or AFFECTLINE_SHARED) and a calibration set cut for this
# checkpoint (`affectline engines calibrate --model CHECKPOINT --out CAL.npz`; a set cut at other view
# sizes is refused). Quantization tries percentile, then entropy, then minmax, as quantize's gate advises,
# and keeps the first file that passes the gate. The three files are built in a staging folder and replace
# the shipped ones only when all three passed: a failure leaves the shipped set as it was.
#   bash scripts/ship_default.sh CHECKPOINT CALIBRATION.npz [EVAL_OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: scripts/ship_default.sh CHECKPOINT CALIBRATION.npz [EVAL_OUT_DIR]"
CK=${1:?$usage}
CAL=${2:?$usage}
OUT=${3:-runs/eval-shipped}
D=${AFFECTLINE_SHARED:-../shared}/data
DATA=(--data "ferplus:$D/ferplus" --data "expw:$D/expw" --data "emotion6:$D/emotion6")
M=edge_agent/models
A=.venv/bin/affectline
mkdir -p runs
STAGE=$(mktemp -d runs/ship-stage.XXXXXX)  # under runs/ (ignored by git): the same disk, so the move is a rename
trap 'rm -rf "$STAGE"' EXIT

quantize() {  # quantize NAME [--target cpu]: the first method whose file passes the gate
  local name=$1 method
  shift
  for method in percentile entropy minmax; do
    if $A engines quantize "$STAGE/affectline-default.onnx" --calibration "$CAL" --method $method "$@" \
      --out "$STAGE/$name.onnx"; then
      echo "$name: $method"
      return 0
    fi
  done
  echo "$name: no calibration method passed the gate" >&2
  return 1
}

$A engines export "$CK" --out "$STAGE/affectline-default.onnx"
quantize affectline-default-int8
quantize affectline-default-int8-cpu --target cpu
# Each sidecar names its file by basename only, so the set moves as it is; all six files first.
FILES=(affectline-default affectline-default-int8 affectline-default-int8-cpu)
for f in "${FILES[@]}"; do
  test -s "$STAGE/$f.onnx" && test -s "$STAGE/$f.onnx.json" || { echo "$f: not built" >&2; exit 1; }
done
for f in "${FILES[@]}"; do
  mv -f "$STAGE/$f.onnx" "$STAGE/$f.onnx.json" $M/
done
for f in "${FILES[@]}"; do
  $A train evaluate $M/$f.onnx --data "ferplus:$D/ferplus" --split val --out "$OUT/$f-val" --threads 2 --mirror
  $A train evaluate $M/$f.onnx "${DATA[@]}" --out "$OUT/$f" --threads 2 --mirror
done
