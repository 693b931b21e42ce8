#!/usr/bin/env bash
# Make a checkpoint the shipped default model: export FP32 ONNX, quantize both INT8 files (each
# verifies itself and writes its sidecar), then evaluate all three through the agent's own inference
# code on the held-out parts. Needs `scripts/setup.sh train`, ../shared/data and the calibration set.
#   bash scripts/ship_default.sh CHECKPOINT [CALIBRATION.npz] [EVAL_OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
CK=${1:?usage: scripts/ship_default.sh CHECKPOINT [CALIBRATION.npz] [EVAL_OUT_DIR]}
CAL=${2:-runs/engines/calib-default.npz}
OUT=${3:-runs/eval-shipped}
D=${AFFECTLINE_SHARED:-../shared}/data
DATA=(--data "ferplus:$D/ferplus" --data "expw:$D/expw" --data "emotion6:$D/emotion6")
M=edge_agent/models
A=.venv/bin/affectline
$A engines export "$CK" --out $M/affectline-default.onnx
$A engines quantize $M/affectline-default.onnx --calibration "$CAL" --out $M/affectline-default-int8.onnx
$A engines quantize $M/affectline-default.onnx --calibration "$CAL" --target cpu \
  --out $M/affectline-default-int8-cpu.onnx
for f in affectline-default affectline-default-int8 affectline-default-int8-cpu; do
  $A train evaluate $M/$f.onnx "${DATA[@]}" --out "$OUT/$f" --threads 2
done
