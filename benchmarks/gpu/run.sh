#!/usr/bin/env bash
# The one-shot GPU run of the learned KARL (issues 20, 26, 30): one command, no network, finished
# within --budget seconds (default 540, under the machine's 600 s per-command cap) by construction.
# From the repository root, with the pack of benchmarks/gpu/make_pack.py carried along:
#
#   OUT=/some/folder benchmarks/gpu/run.sh [--pack gpu-pack] [--budget 540]
#   benchmarks/gpu/run.sh --smoke          # the same steps on the CPU with pca-tiny (about a minute)
#
# A global deadline: every step's time limit is computed from the time left, less what the steps
# after it are promised, so no step can overrun the budget; a step with too little time left is
# skipped and logged. Order (what matters most first):
#   1. environment (nvidia-smi, torch);
#   2. train the paper's variant (`pca-small-paper`: learned tokens over the fitted PCA start, a
#      halting head that reads the encoder only) with `karl train --max-minutes` set from the time left;
#   3. export at once: $OUT/karl-pca-small-paper/{config.json, model.safetensors (fp16), model_card.md}
#      and $OUT/metrics.jsonl, before any evaluation, so a run cut at the cap still returns the model;
#   4. benchmarks/quality.py on the pack's Savoias dev images (single pass vs oracle at ε .05/.09, L1
#      per budget, families, Savoias ρ vs JPEG);
#   5. throughput (benchmarks/throughput.py --methods single: single pass and decode-only) of the
#      learned model; the shipped karl-small's profile (--profile --threads-sweep CORES,1: images/s of
#      --no-l1 and the l1 check, ms per stage, GPU-busy share, a projection), its JSON saved after each
#      thread count so a cut step keeps what it measured; no wavelet search/prefix timing;
#   6. `pytest -m cuda` without the torch.compile test (compile time is not budgeted);
#   7. collect: summary.md, throughput.json, the figures appended to the model card.
# $OUT receives at most 8 files, each under 16 MiB. The exit status is the number of failed or
# skipped steps (0: all ran and passed).
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
SMOKE=0
PACK=""
BUDGET=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --pack) PACK="$2"; shift ;;
    --budget) BUDGET="$2"; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
PY="${PYTHON:-python3}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"   # this checkout's karl_cli, installed or not
WORK="$(mktemp -d "${TMPDIR:-/tmp}/karl-gpu-run.XXXXXX")"
OUT="${OUT:-$WORK/out}"
mkdir -p "$OUT"
LOG="$OUT/run.log"
: > "$LOG"
FAILED=0

if [ "$SMOKE" -eq 1 ]; then
  DEVICE=cpu; PRESET=pca-tiny; BUDGET="${BUDGET:-240}"; STEPS=12; BATCH=8; LR=3e-3; WARMUP=2
  HALT_WARMUP=4; LABEL_DECODES=4; WORKERS=0; EVAL_BATCH=16; FAMILY=1; REPEATS=1; PROFILE_REPEATS=1; TP_LIMIT=4; BOOT=20
  EVAL_LIMIT=12; TRAIN_MAX=$((100 * BUDGET / 540))
else
  DEVICE=cuda; PRESET=pca-small-paper; BUDGET="${BUDGET:-540}"; STEPS=4000; BATCH=256; LR=1e-3; WARMUP=100
  HALT_WARMUP=400; LABEL_DECODES=8; WORKERS=8; EVAL_BATCH=128; FAMILY=16; REPEATS=3; PROFILE_REPEATS=2; TP_LIMIT=200
  BOOT=1000
  EVAL_LIMIT=200; TRAIN_MAX=100000
  PACK="${PACK:-gpu-pack}"
fi
DEADLINE=$((SECONDS + BUDGET))
# Step maxima and promises are set for the 540 s GPU budget and scale with --budget (a smoke run on
# a slow or loaded CPU asks for more time, and every step gets its share).
s() { echo $(( $1 * BUDGET / 540 )); }
AFTER_TRAIN=$(s 215)   # seconds promised to what follows training

log() { echo "== $(date -u +%H:%M:%S) [$((DEADLINE - SECONDS)) s left] $*" | tee -a "$LOG"; }
step() {  # step NAME MAX_SECONDS RESERVE CMD...: limit = min(MAX, time left - RESERVE); skipped under 5 s
  local name="$1" max="$2" reserve="$3"; shift 3
  local limit=$((DEADLINE - SECONDS - reserve))
  [ "$limit" -gt "$max" ] && limit=$max
  if [ "$limit" -lt 5 ]; then
    log "$name: skipped ($((DEADLINE - SECONDS)) s left)"; FAILED=$((FAILED + 1)); return 0
  fi
  log "$name (limit $limit s)"
  local t0=$SECONDS
  timeout --kill-after=3 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  log "$name: exit $rc after $((SECONDS - t0)) s"
  [ "$rc" -eq 0 ] || FAILED=$((FAILED + 1))
  return 0
}

if [ "$SMOKE" -eq 1 ] && [ -z "$PACK" ]; then
  PACK="$WORK/pack"
  step "smoke pack (generated images)" "$(s 120)" "$(s 300)" "$PY" benchmarks/gpu/make_pack.py --synthetic --out "$PACK" \
    --eval "$EVAL_LIMIT" --synthetic-train 24
fi
if [ ! -f "$PACK/pack.json" ]; then
  echo "no pack at $PACK: build it with python benchmarks/gpu/make_pack.py (and carry it)" | tee -a "$LOG"
  exit 2
fi
PACK="$(cd "$PACK" && pwd)"
if ! "$PY" -c "import pytest" 2>/dev/null && [ -d "$PACK/site" ]; then
  export PYTHONPATH="$PYTHONPATH:$PACK/site"   # the pack's copy of pytest (make_pack.py --site)
fi
RUN="$WORK/run"
DEST="$OUT/karl-$PRESET"
log "karl GPU run: smoke=$SMOKE preset=$PRESET device=$DEVICE budget=${BUDGET}s pack=$PACK out=$OUT"

step "environment" "$(s 30)" "$((AFTER_TRAIN + $(s 60)))" bash -c "nvidia-smi || echo 'nvidia-smi: not available'; \"$PY\" -c '
import platform, torch
print(\"python\", platform.python_version(), \"torch\", torch.__version__, \"cuda\", torch.version.cuda,
      \"available\", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(\"device\", p.name, round(p.total_memory / 2**30), \"GiB, bf16\", torch.cuda.is_bf16_supported())
'; cat \"$PACK/pack.json\""

# Training: the trainer's own wall-clock budget (loading included) ends it cleanly 20 s before the
# step's limit; the limit itself is what is left less what the later steps are promised.
TRAIN_LIMIT=$((DEADLINE - SECONDS - AFTER_TRAIN))
[ "$TRAIN_LIMIT" -gt "$TRAIN_MAX" ] && TRAIN_LIMIT=$TRAIN_MAX
MINUTES=$(awk "BEGIN{m=($TRAIN_LIMIT-$(s 20))/60; if (m < 0.05) m = 0.05; printf \"%.3f\", m}")
step "train $PRESET for $MINUTES min" "$TRAIN_LIMIT" "$AFTER_TRAIN" \
  "$PY" -m karl_cli train "$PACK/train" --preset "$PRESET" --out "$RUN" --device "$DEVICE" \
  --steps "$STEPS" --max-minutes "$MINUTES" --batch-size "$BATCH" --lr "$LR" --warmup "$WARMUP" \
  --halt-warmup "$HALT_WARMUP" --label-decodes "$LABEL_DECODES" --workers "$WORKERS" --checkpoint-every 100000

# The model and its training log reach $OUT before anything else can go wrong.
if [ -f "$RUN/model.safetensors" ]; then
  step "export weights" "$(s 30)" 0 "$PY" benchmarks/gpu/collect.py --run "$RUN" --work "$WORK" --out "$OUT" \
    --preset "$PRESET" --weights-only
  step "quality (held-out Savoias dev, families, Savoias ρ)" "$(s 150)" "$(s 70)" "$PY" benchmarks/quality.py "$PACK/eval" \
    --weights "$RUN" --eps 0.05 --eps 0.09 --savoias "$PACK/eval/ratings.csv" --no-cache \
    --bootstrap "$BOOT" --device "$DEVICE" --batch-size "$EVAL_BATCH" --family-size "$FAMILY" \
    --limit "$EVAL_LIMIT" --json "$OUT/quality.json" --markdown "$WORK/quality.md"
  step "throughput: learned (single pass, decode-only)" "$(s 40)" "$(s 45)" "$PY" benchmarks/throughput.py "$PACK/eval" \
    --weights "$RUN" --device "$DEVICE" --repeats "$REPEATS" --limit "$TP_LIMIT" --batch-size "$EVAL_BATCH" \
    --methods single --json "$WORK/tp-learned.json"
else
  log "no trained weights: export, quality and learned throughput skipped"; FAILED=$((FAILED + 3))
fi
# The shipped model's profile at the machine's thread count first, then at one thread (the projection's
# fit); the numba kernels compile on the first batch (seconds, inside the limit). Two repeats, not
# three: each thread count runs decode-only, --no-l1 and l1 twice, plus the profiled passes.
CORES=$(nproc 2>/dev/null || echo 1)
SWEEP="$CORES"; [ "$CORES" -gt 1 ] && SWEEP="$CORES,1"
step "throughput: wavelet karl-small profile (--no-l1 and l1, stages, threads $SWEEP)" "$(s 55)" "$(s 25)" \
  "$PY" benchmarks/throughput.py "$PACK/eval" --weights weights/karl-small --device "$DEVICE" \
  --repeats "$PROFILE_REPEATS" --limit "$TP_LIMIT" --batch-size "$EVAL_BATCH" --profile --threads-sweep "$SWEEP" \
  --project-cores "$CORES" \
  --json "$WORK/tp-wavelet.json"
if "$PY" -c "import pytest" 2>/dev/null; then
  step "pytest -m cuda (no torch.compile)" "$(s 60)" "$(s 30)" "$PY" -m pytest -m cuda tests/test_cuda.py -q \
    -p no:cacheprovider -k "not compiled"
else
  log "pytest -m cuda: skipped (no pytest here)"
fi
step "collect" "$(s 30)" 0 "$PY" benchmarks/gpu/collect.py --run "$RUN" --work "$WORK" --out "$OUT" --preset "$PRESET"
log "done: $FAILED failed step(s); files in $OUT"
ls -la "$OUT" "$DEST" 2>/dev/null | tee -a "$LOG"
exit "$FAILED"
