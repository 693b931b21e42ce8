#!/usr/bin/env bash
# Static checks CI runs after the tests: ruff (lint + format) and mypy over the whole tree.
# Needs `scripts/setup.sh dev` (done by scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy edge_agent train engines calibration tests scripts
