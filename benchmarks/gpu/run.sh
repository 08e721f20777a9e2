#!/usr/bin/env bash
# The one-shot GPU run of the learned KARL (issue 20): one command, no network, under 9 minutes on
# one H200. From the repository root, with the pack of benchmarks/gpu/make_pack.py carried along:
#
#   OUT=/some/folder benchmarks/gpu/run.sh [--pack gpu-pack] [--minutes 3]
#   benchmarks/gpu/run.sh --smoke          # the same steps on the CPU with learned-tiny (a minute or two)
#
# Steps: the environment (nvidia-smi, torch); `pytest -m cuda`; `karl train --preset learned-128` for a
# fixed wall-clock budget (--max-minutes) from the pack; benchmarks/quality.py on the pack's 200
# Savoias dev images (misses at ε .03/.05/.09, single/oracle token ratio, L1 per budget, procedural
# families, Savoias ρ vs JPEG from eval/ratings.csv); benchmarks/throughput.py images/s (single
# pass, search, decode-only) for the learned and the shipped wavelet model.
#
# $OUT receives 8 files, each under 16 MiB: run.log, summary.md, quality.json, throughput.json,
# metrics.jsonl and karl-learned-128/{config.json, model.safetensors (fp16), model_card.md}.
# A failing step is logged and the run goes on, so whatever worked comes back; the exit status is
# the number of failed steps (0: all passed).
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
SMOKE=0
PACK=""
MINUTES=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --pack) PACK="$2"; shift ;;
    --minutes) MINUTES="$2"; shift ;;
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

log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
step() {  # step NAME SECONDS CMD...: run with a time limit, log everything, count failures
  local name="$1" limit="$2"; shift 2
  log "$name"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  log "$name: exit $rc after $((SECONDS - t0)) s"
  [ "$rc" -eq 0 ] || FAILED=$((FAILED + 1))
  return 0
}

if [ "$SMOKE" -eq 1 ]; then
  DEVICE=cpu; PRESET=learned-tiny; MINUTES="${MINUTES:-1}"; STEPS=20; BATCH=8; LR=3e-3; WARMUP=4
  WORKERS=0; TRAIN_EXTRA=240; EVAL_BATCH=16; FAMILY=1; REPEATS=1; TP_LIMIT=4; BOOT=20
  METHODS=single
  if [ -z "$PACK" ]; then
    PACK="$WORK/pack"
    step "smoke pack (generated images)" 120 "$PY" benchmarks/gpu/make_pack.py --synthetic --out "$PACK" \
      --eval 12 --synthetic-train 24
  fi
else
  DEVICE=cuda; PRESET=learned-128; MINUTES="${MINUTES:-3}"; STEPS=3000; BATCH=128; LR=1e-3; WARMUP=200
  WORKERS=8; TRAIN_EXTRA=150; EVAL_BATCH=128; FAMILY=16; REPEATS=3; TP_LIMIT=200; BOOT=1000
  METHODS=single,kc_only,search,prefix
  PACK="${PACK:-gpu-pack}"
fi
if [ ! -f "$PACK/pack.json" ]; then
  echo "no pack at $PACK: build it with python benchmarks/gpu/make_pack.py (and carry it)" | tee -a "$LOG"
  exit 2
fi
PACK="$(cd "$PACK" && pwd)"
if ! "$PY" -c "import pytest" 2>/dev/null; then
  export PYTHONPATH="$PYTHONPATH:$PACK/site"   # the pack's copy of pytest, only where it is missing
fi
RUN="$WORK/run"
log "karl GPU run: smoke=$SMOKE preset=$PRESET device=$DEVICE pack=$PACK out=$OUT"

step "environment" 60 bash -c "nvidia-smi || echo 'nvidia-smi: not available'; \"$PY\" -c '
import platform, torch
print(\"python\", platform.python_version(), \"torch\", torch.__version__, \"cuda\", torch.version.cuda,
      \"available\", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(\"device\", p.name, round(p.total_memory / 2**30), \"GiB, bf16\", torch.cuda.is_bf16_supported())
'; cat \"$PACK/pack.json\""

step "pytest -m cuda" 240 "$PY" -m pytest -m cuda tests/test_cuda.py -q -p no:cacheprovider

step "train $PRESET for $MINUTES min" "$(awk "BEGIN{print int($MINUTES*60)+$TRAIN_EXTRA}")" \
  "$PY" -m karl_cli train "$PACK/train" --preset "$PRESET" --out "$RUN" --device "$DEVICE" \
  --steps "$STEPS" --max-minutes "$MINUTES" --batch-size "$BATCH" --lr "$LR" --warmup "$WARMUP" \
  --workers "$WORKERS" --checkpoint-every 100000

if [ -f "$RUN/model.safetensors" ]; then
  step "quality (held-out Savoias dev, families, Savoias ρ)" 240 "$PY" benchmarks/quality.py "$PACK/eval" \
    --weights "$RUN" --eps 0.03 --eps 0.05 --eps 0.09 --savoias "$PACK/eval/ratings.csv" --no-cache \
    --bootstrap "$BOOT" --device "$DEVICE" --batch-size "$EVAL_BATCH" --family-size "$FAMILY" \
    --json "$OUT/quality.json" --markdown "$WORK/quality.md"
  step "throughput: learned" 180 "$PY" benchmarks/throughput.py "$PACK/eval" --weights "$RUN" \
    --device "$DEVICE" --repeats "$REPEATS" --limit "$TP_LIMIT" --batch-size "$EVAL_BATCH" --methods "$METHODS" \
    --json "$WORK/tp-learned.json"
else
  log "no trained weights: quality and learned throughput skipped"; FAILED=$((FAILED + 2))
fi
step "throughput: wavelet (weights/karl-small)" 180 "$PY" benchmarks/throughput.py "$PACK/eval" \
  --weights weights/karl-small --device "$DEVICE" --repeats "$REPEATS" --limit "$TP_LIMIT" \
  --batch-size "$EVAL_BATCH" --methods "$METHODS" --json "$WORK/tp-wavelet.json"

step "collect" 60 "$PY" benchmarks/gpu/collect.py --run "$RUN" --work "$WORK" --out "$OUT" --preset "$PRESET"
log "done: $FAILED failed step(s); files in $OUT"
ls -la "$OUT" "$OUT"/karl-learned-* 2>/dev/null | tee -a "$LOG"
exit "$FAILED"
