#!/usr/bin/env bash
# Train the LoRA adapter (quote-and-cite recipe) from a fresh clone and export it to ragbot/assets/adapter, in one command.
# (The adapter shipped today is older: it came from this script at commit 978a49d, 747 structure-question examples;
#  the recipe below has not yet produced one that beats the base model, see README "Fine-tuning the answerer".)
#   scripts/train_adapter.sh [SHARED_CORPUS]        (default ../shared/corpus)
# It takes hours on a 2-core CPU: run it in the background; it logs to $RAGBOT_HOME/train_adapter.log
#   nohup scripts/train_adapter.sh > /dev/null 2>&1 &      tail -f data/train_adapter.log
# Re-running it resumes: a finished data build is kept, training resumes from its checkpoints and its cache
# of the frozen layers. Generated data, caches and checkpoints stay under $RAGBOT_HOME (default ./data, not in
# the repo): they hold corpus text.
# Steps: install, ingest the bundled corpus/ and the shared corpus, write training data from their chunks
# (evaluation questions are used only to drop near-duplicates), train, export the adapter into the repo.
# Precision is picked at run time and logged: bf16 on CPUs with AVX512-BF16/AMX (and GPUs), else fp32.
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${1:-../shared/corpus}"
export RAGBOT_HOME="${RAGBOT_HOME:-$PWD/data}"
mkdir -p "$RAGBOT_HOME"
log="$RAGBOT_HOME/train_adapter.log"
exec > >(tee -a "$log") 2>&1
echo "== $(date -u +%FT%TZ) train_adapter.sh on $(nproc) cores; CPU flags: $(grep -o -w -E 'avx2|avx512_bf16|amx_bf16|amx_tile' /proc/cpuinfo 2>/dev/null | sort -u | tr '\n' ' ')"
start=$(date +%s)
scripts/setup.sh cpu,ui
bin=.venv/bin
$bin/ragbot ingest corpus/ --index "$RAGBOT_HOME/index"
$bin/ragbot ingest "$shared" --index "$RAGBOT_HOME/index-shared"
data="$RAGBOT_HOME/ft-data"
if [ ! -f "$data/data_card.json" ]; then
  # the bundled corpus's index first: the data card's example rows come from it
  $bin/ragbot finetune data --index "$RAGBOT_HOME/index" --index "$RAGBOT_HOME/index-shared" --out "$data.partial" --seed 0
  rm -rf "$data" && mv "$data.partial" "$data"
fi
echo "== data ready after $(( ($(date +%s) - start) / 60 )) min"
RAGBOT_ADAPTER= $bin/ragbot finetune train --data "$data" --out "$RAGBOT_HOME/adapter" --seed 0
$bin/ragbot finetune export --adapter "$RAGBOT_HOME/adapter" --out ragbot/assets/adapter
echo "== done in $(( ($(date +%s) - start) / 60 )) min"
