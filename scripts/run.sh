#!/usr/bin/env bash
# Set everything up, ingest the bundled corpus/ (only what changed) and start the web app on it.
# The first run installs packages and builds the offline models (several minutes); later runs start in seconds.
# The app has no login of its own, so it listens on 127.0.0.1 only: RAGBOT_ADDRESS=0.0.0.0 (or a LAN address)
# opens it to the network, which is meant for behind an authenticating reverse proxy (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
# llama.cpp answers better and faster on CPUs (README, "LLM backends"); its extra builds it from source (~4 min on
# 2 cores). When that install fails (most often: no C++ compiler) ragbot answers with transformers instead, and
# later runs do not try again until .venv/.no-llamacpp is removed.
if [ -f .venv/.no-llamacpp ] || ! scripts/setup.sh cpu,ui,llamacpp; then
    [ -f .venv/.no-llamacpp ] || {
        echo "warning: installing the llamacpp extra failed (see above; a C++ compiler is needed: apt install g++);" \
             "answering with transformers instead. Remove .venv/.no-llamacpp to try again." >&2
        touch .venv/.no-llamacpp
    }
    scripts/setup.sh cpu,ui
fi
export RAGBOT_HOME="${RAGBOT_HOME:-$PWD/data}"
# the offline models, once (later runs check them in a second); the app starts even when one is unavailable
.venv/bin/ragbot prepare || echo "warning: not every configured model is available (see above); starting anyway" >&2
.venv/bin/ragbot ingest corpus/ --prune
address="${RAGBOT_ADDRESS:-127.0.0.1}"
port="${RAGBOT_PORT:-8501}"
echo
echo "ragbot is starting: open http://localhost:${port} (listening on ${address}; Ctrl+C stops it)"
echo
exec .venv/bin/streamlit run ui/app.py --server.headless true --server.address "$address" --server.port "$port" \
    --server.maxUploadSize 20 --server.fileWatcherType none --client.toolbarMode viewer --browser.gatherUsageStats false
