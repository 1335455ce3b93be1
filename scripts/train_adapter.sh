#!/usr/bin/env bash
# Reproduce the shipped LoRA adapter (ragbot/assets/adapter) from a fresh clone, in one command:
#   scripts/train_adapter.sh [SHARED_CORPUS]        (default ../shared/corpus)
# Steps: install, ingest the bundled corpus/ and the shared corpus, generate training data from their
# chunks (evaluation questions are used only to drop near-duplicates), train, export the adapter into the repo.
# The shipped adapter was trained on a 2-core CPU without bf16 instructions (fp32): data ~1 min, training
# 64 steps (0.75 epoch, LoRA in the last 6 layers) 63 min. On a CPU with AVX512-BF16/AMX it runs in bf16
# (~3x faster); a GPU is used automatically when present (minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${1:-../shared/corpus}"
scripts/setup.sh cpu,ui
export RAGBOT_HOME="${RAGBOT_HOME:-$PWD/data}"
bin=.venv/bin
$bin/ragbot ingest corpus/ --index "$RAGBOT_HOME/index"
$bin/ragbot ingest "$shared" --index "$RAGBOT_HOME/index-shared"
# the bundled corpus's index first: the data card's example rows come from it
$bin/ragbot finetune data --index "$RAGBOT_HOME/index" --index "$RAGBOT_HOME/index-shared" --out "$RAGBOT_HOME/ft-data" \
    --llm-chunks 0 --seed 0
RAGBOT_ADAPTER= $bin/ragbot finetune train --data "$RAGBOT_HOME/ft-data" --out "$RAGBOT_HOME/adapter" --seed 0 \
    --top-layers 6 --epochs 0.75
$bin/ragbot finetune export --adapter "$RAGBOT_HOME/adapter" --out ragbot/assets/adapter
