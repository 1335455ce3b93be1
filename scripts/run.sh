#!/usr/bin/env bash
# Set everything up, ingest the bundled corpus/ (only what changed), and answer a sample question.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh cpu,ui
export RAGBOT_HOME="${RAGBOT_HOME:-$PWD/data}"
.venv/bin/ragbot ingest corpus/ --prune
.venv/bin/ragbot ask "${1:-LoRA 为什么能减少微调的显存占用？}"
