#!/usr/bin/env bash
# Train the ALIT peer (arXiv 2411.02393) with the same data, preset, T_max, steps and batch as the
# shipped KARL model, so `karl compare` sets them side by side (KARL paper, Table 2):
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
# This is the recipe of the shipped weights/alit-small (whose run was stopped at step 141 of an
# 800-step schedule and resumed with `--steps 400`; this script runs the plain 400-step schedule).
# Cost: ALIT runs its (2-block) encoder once per iteration, 12 iterations of 32 tokens to T_max =
# 384 (the ALIT paper's 32 tokens per iteration), over a growing sequence, then decodes twice:
# about 40 minutes on 2 cores. Do not start it while another training run has the CPU.
# Data: the 1,000 ImageNet images + 70 Debian photos (shared data: imagenet-sample, debian-photos).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="${1:-/work/runs/alit-small}"
shift || true
DATA="${KARL_DATA:-/work/shared/data}"
# A resumed run keeps its sizes (karl train refuses to change them).
SIZES=(--token-step 32 --max-tokens 384)
for a in "$@"; do [[ "$a" == --resume ]] && SIZES=(); done
exec .venv/bin/karl train "$DATA/imagenet-sample" "$DATA/debian-photos" \
    --out "$RUN" --preset small-teacher --arch alit "${SIZES[@]}" \
    --steps 400 --batch-size 32 --lr 1.5e-3 --warmup 100 --checkpoint-every 200 "$@"
