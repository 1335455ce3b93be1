#!/usr/bin/env bash
# Reproduce the shipped LoRA adapter (ragbot/assets/adapter) from a fresh clone, in one command:
#   scripts/train_adapter.sh [SHARED_CORPUS]        (default ../shared/corpus)
# Steps: install, ingest the bundled corpus/ and the shared corpus, generate training data from their
# chunks (evaluation questions are used only to drop near-duplicates), train, copy the adapter in.
# CPU (2 cores): ~1 min of data, ~49 min of training (51 steps); a GPU is used automatically when present.
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${1:-../shared/corpus}"
scripts/setup.sh cpu,ui
export RAGBOT_HOME="${RAGBOT_HOME:-$PWD/data}"
bin=.venv/bin
$bin/ragbot ingest corpus/ --index "$RAGBOT_HOME/index"
$bin/ragbot ingest "$shared" --index "$RAGBOT_HOME/index-shared"
$bin/ragbot finetune data --index "$RAGBOT_HOME/index" --index "$RAGBOT_HOME/index-shared" --out "$RAGBOT_HOME/ft-data" \
    --passages 5 --window 200 --refusal-ratio 0.3 --seed 0
RAGBOT_ADAPTER= $bin/ragbot finetune train --data "$RAGBOT_HOME/ft-data" --out "$RAGBOT_HOME/adapter" \
    --max-examples 240 --grad-accum 4 --max-length 900 --top-layers 12 --rank 16 --alpha 32 --lr 1e-4 --epochs 1 --seed 0
$bin/python - "$RAGBOT_HOME/adapter" ragbot/assets/adapter <<'PY'
import json, shutil, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
for name in ("adapter_model.safetensors", "adapter_config.json", "train_settings.json", "data_card.json", "data_card.md"):
    shutil.copy(src / name, dst / name)
config = json.loads((dst / "adapter_config.json").read_text())
config["base_model_name_or_path"] = "bundle:qwen2.5-coder-0.5b-instruct"  # not this machine's path
(dst / "adapter_config.json").write_text(json.dumps(config, indent=2))
print(f"adapter copied to {dst}")
PY
