#!/usr/bin/env bash
# Train the ALIT peer (arXiv 2411.02393) with the same data, preset, steps and batch as the shipped
# KARL model, so `karl compare` sets them side by side (KARL paper, Table 2). T_max is pinned at
# 256, the shipped peer's (trained beside the previous, 256-token default); a trailing
# `--max-tokens 384` matches the current default instead:
#
#   benchmarks/train_alit.sh                 # run folder: /work/runs/alit-small (override: $1)
#   benchmarks/train_alit.sh RUN --resume    # continue an interrupted run
#
# Then ship it like KARL: copy config.json, model.safetensors and model_card.md from the run
# folder to weights/alit-small/, and compare:
#
#   karl compare IMAGES/ -w weights/karl-small -w weights/alit-small --eps 0.03 --eps 0.05 --eps 0.09 \
#       --csv benchmarks/compare.csv
#
# This is the recipe of the shipped weights/alit-small. Cost: ALIT runs its (2-block) encoder once
# per iteration, 8 iterations of 32 tokens to T_max = 256 (the ALIT paper's 32 tokens per
# iteration), over a growing sequence, then decodes twice. Do not start it while another training
# run has the CPU.
# Data: the 1,000 ImageNet images + 70 Debian photos of DESIGN.md §4.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="${1:-/work/runs/alit-small}"
shift || true
DATA="${KARL_DATA:-/work/shared/data}"
exec .venv/bin/karl train "$DATA/imagenet-sample" "$DATA/debian-photos" \
    --out "$RUN" --preset small --arch alit --token-step 32 --max-tokens 256 \
    --steps 800 --batch-size 32 --lr 1.5e-3 --warmup 100 --checkpoint-every 200 "$@"
