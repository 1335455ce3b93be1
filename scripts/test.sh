#!/usr/bin/env bash
# Set everything up and run the test suite (unit + integration with the real offline models).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not llm" -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh cpu,ui,dev
exec .venv/bin/python -m pytest "$@"
