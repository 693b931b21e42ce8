#!/usr/bin/env bash
# Set up (once) and run the agent on its embedded defaults: real sample clips, the shipped
# default model and an in-process loopback MQTT broker. Extra arguments go to `affectline run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/affectline run "$@"
