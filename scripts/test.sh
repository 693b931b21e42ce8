#!/usr/bin/env bash
# Set up (once) and run the test suite on CPU with the real components it needs (mosquitto).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,train
if ! command -v mosquitto >/dev/null 2>&1; then
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
fi
exec .venv/bin/python -m pytest -q "$@"
