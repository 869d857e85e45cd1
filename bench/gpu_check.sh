#!/usr/bin/env bash
# One check of ptxfast on a GPU machine without network access, in under 6 minutes.
#
#   bench/gpu_check.sh OUTDIR            # on an H100/H200 (run from anywhere; it cd's to the repo)
#   bench/gpu_check.sh OUTDIR --dry      # the same steps on the CPU at tiny sizes (or DRY=1)
#
# Steps, each under its own `timeout`, the next one running whatever the last one did:
#   install   the wheels in .whl/ (smp, pydicom, pylibjpeg + codecs, imagecodecs, simplejpeg;
#             nvidia-nvimgcodec-cu12 for the decode step) into $SITE, when missing
#   env       nvidia-smi -L and versions -> OUTDIR/check.json
#   synth     a small DICOM set (64 phantoms at 1024², CANDID-PTX layout)
#   ckpt      random-init checkpoints of eb3un, eb3un+eb3, rn34un, rn34un+rn34 (training's format)
#   gputests  the GPU-marked tests (`pytest -m gpu`), their counts in the summary
#   export    eb3un+eb3 (with its mask output) and rn34un+rn34 to TorchScript fp16 (TensorRT too
#             when torch_tensorrt imports); random weights: the gate is measured, not enforced
#   bench     eb3un+eb3 at 512², batch 1/8/32/64: the artifact, eager fp32/fp16, TorchScript
#             fp32/fp16, TensorRT (listed with its reason when it cannot run)
#   score     `ptxfast score` of 8 hard-linked copies of the DICOM folder (512 files) with the
#             exported artifact, batch 16; `score-outputs` again with --masks and --dicom-seg
#             and the same model labelling at p > 0.49, so every image is positive (the output
#             threads against a fast model; needs highdicom from .whl/)
#   decode    bench/gpu_decode_bench.py: GPU (nvImageCodec, batched, window + resize on the GPU)
#             against CPU decoding of the same compressed DICOMs (JPEG lossless, JPEG baseline,
#             JPEG 2000, HTJ2K; 2048² to 512²), with the pixel parity; the dry run uses the CPU
#             stand-in decoder
#   train     training images/s, paper recipe (fp32) vs fast path (AMP + channels_last)
#   inductor  eb3un+eb3 with torch.compile (default mode), in the time left; its compilation
#             starts in the background after `install` (random init: the same graph, so the same
#             on-disk inductor/triton caches) and is stopped before `bench`, so no timing overlaps
#   inductor-ro  the same with mode="reduce-overhead" (CUDA graphs, no autotuning)
#   rn34      rn34un+rn34 on the same backends, if time is still left
# OUTDIR gets (flat, at most 8 files): summary.md, check.json, bench-eb3.json,
# bench-inductor.json, bench-rn34.json, score.json, train.json, log.txt; the GPU tests' JUnit
# XML, score-outputs.json and bench-inductor-ro.json stay in WORK and are summarised in
# summary.md, which is rebuilt after every step, so a run cut short still says what it measured.
set -u -o pipefail

OUT=${1:?usage: bench/gpu_check.sh OUTDIR [--dry]}
DRY=${DRY:-0}
[[ "${2:-}" == "--dry" ]] && DRY=1
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WORK=${WORK:-$(mktemp -d /tmp/ptxfast-check.XXXXXX)}
mkdir -p "$WORK"
SITE=${SITE:-/tmp/site}
LOG=$OUT/log.txt
: > "$LOG"
: > "$WORK/stages.tsv"
export COLUMNS=160 HF_HUB_OFFLINE=1 TORCHINDUCTOR_CACHE_DIR=$WORK/inductor-cache
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"

set -a # the settings below reach the step functions, which run in a child bash under timeout
if [[ $DRY == 1 ]]; then
  # CPU, tiny: proves the steps work before a GPU is spent on them.
  DEVICE=cpu SIZE=64 N_DICOM=8 DICOM_SIZE=128 BATCHES=1,2 INDUCTOR_BATCHES=2 WARMUP=2 ITERS=2
  REPEATS=2 PARITY=8 STAGE_FILES=2 PRECISION=fp32 SCORE_BATCH=2 SCORE_COPIES=2 TRAIN_SIZE=64
  TRAIN_BATCH=2
  TRAIN_STEPS=2 TRAIN_WARMUP=1 DECODE_N=2 DECODE_SIDE=128 BUDGET=${BUDGET:-900} INDUCTOR_LIMIT=${INDUCTOR_LIMIT:-20}
  THREADS="--threads 1" SYNTH_WORKERS=2 SCALE=${SCALE:-3}
  OMP_NUM_THREADS=1 # a small shared CPU: one thread per process beats oversubscription
else
  DEVICE=cuda SIZE=512 N_DICOM=64 DICOM_SIZE=1024 BATCHES=1,8,32,64 INDUCTOR_BATCHES=1,8,32,64
  WARMUP=5 ITERS=10 REPEATS=2 PARITY=32 STAGE_FILES=24 PRECISION=fp16 SCORE_BATCH=16 SCORE_COPIES=8
  TRAIN_SIZE=512 TRAIN_BATCH=4 TRAIN_STEPS=10 TRAIN_WARMUP=3 DECODE_N=32 DECODE_SIDE=2048 BUDGET=${BUDGET:-330}
  INDUCTOR_LIMIT=${INDUCTOR_LIMIT:-110} THREADS="" SYNTH_WORKERS=8 SCALE=1
fi
set +a
T0=$SECONDS

log() { echo "[$(date +%H:%M:%S) +$((SECONDS - T0))s] $*" | tee -a "$LOG"; }
summary() { "$PY" bench/gpu_check.py summary "$OUT" "$WORK" >> "$LOG" 2>&1 || log "summary failed"; }

# stage NAME LIMIT CMD...: run CMD under `timeout` (never past the budget), log its output,
# record its exit status and seconds, rebuild the summary, and always return 0.
stage() {
  local name=$1 limit=$(($2 * SCALE)) left start rc
  shift 2
  left=$((BUDGET - (SECONDS - T0)))
  if ((left < 10)); then
    log "== $name skipped: the ${BUDGET}s budget is spent"
    printf '%s\tskipped\t0\t%s\n' "$name" "$limit" >> "$WORK/stages.tsv"
    summary
    return 0
  fi
  ((limit > left)) && limit=$left
  log "== $name (timeout ${limit}s): $*"
  start=$SECONDS
  if declare -F "$1" > /dev/null; then # a step function: timeout needs a process to run
    timeout -k 5 "$limit" bash -c '"$@"' _ "$@" >> "$LOG" 2>&1
  else
    timeout -k 5 "$limit" "$@" >> "$LOG" 2>&1
  fi
  rc=$?
  log "-- $name: exit $rc after $((SECONDS - start))s"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" >> "$WORK/stages.tsv"
  summary
  return 0
}

install_wheels() {
  if "$PY" -c "import segmentation_models_pytorch, pydicom, pylibjpeg, libjpeg, openjpeg, rle, imagecodecs, simplejpeg" 2> /dev/null; then
    echo "smp, pydicom and the pylibjpeg codecs already import"
    if [[ $DRY == 1 ]] && ls .whl/*.whl > /dev/null 2>&1; then
      # Check the wheel set itself the way the GPU machine installs it (for its Python 3.12).
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --only-binary=:all: --python-version 3.12 --target "$WORK/site-check" .whl/*.whl &&
        ls "$WORK/site-check"
    fi
    return
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl &&
    "$PY" -c "import segmentation_models_pytorch, pydicom, pylibjpeg, libjpeg, openjpeg, rle, imagecodecs, simplejpeg; print('wheels ok')"
}

environment() {
  if ! command -v nvidia-smi > /dev/null; then
    echo "nvidia-smi: not on PATH" | tee "$WORK/nvidia-smi.txt"
  fi
  nvidia-smi -L 2> /dev/null | tee -a "$WORK/nvidia-smi.txt"
  nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm \
    --format=csv 2> /dev/null | tee -a "$WORK/nvidia-smi.txt"
  "$PY" bench/gpu_check.py env "$OUT/check.json" --device "$DEVICE"
}

export_both() {
  # The two cascades in parallel (separate processes); tensorrt too when it imports.
  local tol=(--min-agreement 0 --max-df1 1 --max-dprob 1) pids=() rc=0 name
  for name in eb3un+eb3 rn34un+rn34; do
    "$PY" -m ptxfast export --cascade "$name" --runs "$WORK/runs" --out "$WORK/exports" \
      --device "$DEVICE" --backend torchscript --precision "$PRECISION" --parity-n "$PARITY" \
      --return-mask "${tol[@]}" 2>&1 | sed -u "s/^/[$name] /" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
  # Random init scores every image p = 0.5 (the head starts at zero), below the 0.5 cut-off; the
  # same model labelled at p > 0.49 makes every image positive, so score-outputs writes a mask
  # and a DICOM SEG for each.
  "$PY" -m ptxfast export --cascade eb3un+eb3 --runs "$WORK/runs" --out "$WORK/exports-pos" \
    --device "$DEVICE" --backend torchscript --precision "$PRECISION" --parity-n "$PARITY" \
    --return-mask --operating-point threshold=0.49 "${tol[@]}" > /dev/null || rc=$?
  if "$PY" -c "import torch_tensorrt" 2> /dev/null; then
    "$PY" -m ptxfast export --cascade eb3un+eb3 --runs "$WORK/runs" --out "$WORK/exports" \
      --device "$DEVICE" --backend tensorrt --precision fp16 --parity-n "$PARITY" "${tol[@]}" || rc=$?
  else
    echo "tensorrt export skipped: torch_tensorrt does not import here (see check.json tensorrt_reason)"
  fi
  return $rc
}

score_folder() { # score_folder ARTIFACT JSON [SCORE OPTIONS...]
  # SCORE_COPIES hard-linked copies of the synthetic DICOMs: enough batches for a steady rate
  # after the ones decoded ahead (the summary times none from a handful of batches).
  local artifact=$1 json=$2 i
  shift 2
  if [[ ! -d $WORK/score ]]; then
    for ((i = 1; i <= SCORE_COPIES; i++)); do
      mkdir -p "$WORK/score/$i" && cp -al "$WORK/dicom/images/." "$WORK/score/$i/" || return 1
    done
  fi
  "$PY" -m ptxfast score "$WORK/score" --out "$WORK/preds.csv" --model "$artifact" \
    --device "$DEVICE" --batch-size "$SCORE_BATCH" --json "$json" --overwrite "$@"
}

gpu_tests() { # the GPU-marked tests; on a CPU they skip, which the summary says
  "$PY" -m pytest -q -m gpu -p no:cacheprovider --junitxml="$WORK/gputests.xml" tests
}

bench() { # bench NAME ARGS...: ptxfast bench, JSON to OUT (WORK for the precompile)
  local name=$1 dir=$OUT
  shift
  [[ $name == precompile || $name == inductor-ro ]] && dir=$WORK # OUT holds 8 files at most
  "$PY" -m ptxfast bench --device "$DEVICE" --warmup "$WARMUP" --iters "$ITERS" \
    --repeats "$REPEATS" $THREADS "$@" --json "$dir/bench-$name.json" \
    --markdown "$WORK/bench-$name.md"
}

export -f install_wheels environment export_both score_folder gpu_tests bench
export OUT WORK SITE PY DRY REPO
# Inductor compiles for minutes; doing it while the CPU-side steps run leaves its caches warm
# for the `inductor` step. It is stopped before `bench` so it never shares the GPU with a timing.
precompile_start() {
  log "== precompile (background): inductor eb3un+eb3 at ${SIZE}², batch ${INDUCTOR_BATCHES}"
  PRE_T0=$SECONDS
  timeout -k 5 $((150 * SCALE)) bash -c '"$@"' _ bench precompile --cascade eb3un+eb3 \
    --size "$SIZE" --backends inductor --batch-sizes "$INDUCTOR_BATCHES" --warmup 1 --iters 1 \
    --repeats 1 --parity-n 0 --stage-files 0 > "$WORK/precompile.log" 2>&1 &
  PRE_PID=$!
}
precompile_stop() {
  local rc
  if kill -0 "$PRE_PID" 2> /dev/null; then
    kill -TERM "$PRE_PID" 2> /dev/null # timeout passes it on to the compile's process group
    wait "$PRE_PID" 2> /dev/null
    rc=stopped
  else
    wait "$PRE_PID" 2> /dev/null
    rc=$?
  fi
  grep -E "inductor|error" "$WORK/precompile.log" | tail -5 >> "$LOG"
  log "-- precompile: ${rc} after $((SECONDS - PRE_T0))s"
  printf '%s\t%s\t%s\t%s\n' "precompile (background)" "$rc" "$((SECONDS - PRE_T0))" \
    "$((150 * SCALE))" >> "$WORK/stages.tsv"
}

ARTIFACT=$WORK/exports/eb3un+eb3.torchscript-$PRECISION.json
BACKENDS=artifact,eager,eager-fp16,torchscript,torchscript-fp16,tensorrt

log "ptxfast GPU check: OUT=$OUT WORK=$WORK DRY=$DRY PYTHON=$PY budget ${BUDGET}s"
stage install 60 install_wheels
precompile_start
stage env 40 environment
stage synth 45 "$PY" -m ptxfast synth "$WORK/dicom" --n "$N_DICOM" --seed 0 --size "$DICOM_SIZE" --workers "$SYNTH_WORKERS"
stage ckpt 60 "$PY" bench/gpu_check.py checkpoints "$WORK/runs" --size "$SIZE"
stage export 90 export_both
precompile_stop
stage bench 90 bench eb3 --model "$ARTIFACT" --backends "$BACKENDS" --batch-sizes "$BATCHES" \
  --parity-n "$PARITY" --stage-files "$STAGE_FILES"
stage score 45 score_folder "$ARTIFACT" "$OUT/score.json"
stage score-outputs 45 score_folder "$WORK/exports-pos/${ARTIFACT##*/}" "$WORK/score-outputs.json" \
  --masks "$WORK/masks" --dicom-seg "$WORK/seg"
stage decode 45 "$PY" bench/gpu_decode_bench.py --device "$DEVICE" --n "$DECODE_N" \
  --side "$DECODE_SIDE" --size "$SIZE" --json "$WORK/decode-gpu.json" --markdown "$WORK/decode-gpu.md"
stage train 50 "$PY" bench/train_bench.py --arch eb3un,eb3 --size "$TRAIN_SIZE" \
  --batch "$TRAIN_BATCH" --steps "$TRAIN_STEPS" --warmup "$TRAIN_WARMUP" --device "$DEVICE" \
  --modes paper,fast \
  --json "$OUT/train.json"
stage gputests 60 gpu_tests
stage inductor "$INDUCTOR_LIMIT" bench inductor --cascade eb3un+eb3 --runs "$WORK/runs" \
  --backends inductor --batch-sizes "$INDUCTOR_BATCHES" --parity-n 16 --stage-files 0
stage inductor-ro "$INDUCTOR_LIMIT" bench inductor-ro --cascade eb3un+eb3 --runs "$WORK/runs" \
  --backends inductor --inductor-mode reduce-overhead --batch-sizes "$INDUCTOR_BATCHES" \
  --parity-n 16 --stage-files 0
stage rn34 40 bench rn34 --cascade rn34un+rn34 --runs "$WORK/runs" \
  --backends eager,eager-fp16,torchscript,torchscript-fp16 --batch-sizes "$BATCHES" \
  --parity-n 16 --stage-files 0
log "done in $((SECONDS - T0))s; OUT has: $(cd "$OUT" && ls | tr '\n' ' ')"
exit 0
