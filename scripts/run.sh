#!/usr/bin/env bash
# Set everything up, ingest the bundled corpus/ (only what changed) and start the web app on it.
# The first run installs packages and builds the offline models (several minutes); later runs start in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh cpu,ui
export RAGBOT_HOME="${RAGBOT_HOME:-$PWD/data}"
.venv/bin/ragbot ingest corpus/ --prune
port="${RAGBOT_PORT:-8501}"
echo
echo "ragbot is starting: open http://localhost:${port} (Ctrl+C stops it)"
echo
exec .venv/bin/streamlit run ui/app.py --server.headless true --server.port "$port" --server.maxUploadSize 20 \
    --server.fileWatcherType none --client.toolbarMode viewer --browser.gatherUsageStats false
