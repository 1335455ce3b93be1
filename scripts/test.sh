#!/usr/bin/env bash
# Set everything up and run the test suite: unit tests, and integration tests with the real offline models
# (built once into data/models) and a headless-Chromium run of the web app.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not integration" -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh cpu,ui,dev,llamacpp
scripts/install_browser.sh
exec .venv/bin/python -m pytest "$@"
