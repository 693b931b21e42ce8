#!/usr/bin/env bash
# Set up (once) and run the test suite on CPU with the real components it needs (mosquitto).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,train
bash scripts/install-mosquitto.sh
exec .venv/bin/python -m pytest -q "$@"
