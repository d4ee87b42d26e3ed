#!/bin/bash
# Issue 17's GPU checks as one prepared script (docs/performance.md takes its figures from it):
#   1. `drx bench model` of the paper-shape `full` step at batch 32: eager (today's step) and
#      compiled (train.compile=true; fused AdamW is the default on CUDA), with FLOPs per image,
#      TFLOP/s and MFU against the GPU's peak;
#   2. the same, compiled, packed K at a time on the one GPU (Ray's fractional GPUs);
#   3. every variant, eager;
#   4. `drx bench data` at 384-px crops on a KonIQ-sized synthetic tree, as paper-koniq reads it
#      (shorter side to 384, 3 crops per image): crops/s per worker and the
#      workers needed to feed the compiled step's images/s.
# Each step writes JSON under $OUT; deploy/gpu_summary.py prints one table and writes
# $OUT/gpu-check.json. About 8 minutes on one H200.
#
#   deploy/gpu-check.sh            on the GPU machine (its Python lacks drx's pure-Python needs: they
#                                  come as wheels in .whl/, see docs/performance.md)
#   deploy/gpu-check.sh --dry-run  the same steps on this machine's CPU at the tiny preset's shapes,
#                                  a few steps each: checks the script's logic (about 5 minutes on 2 cores)
#   SKIP="model_variants data" ...  leaves those steps out (named in the summary as not run)
set -u -o pipefail
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "gpu-check.sh: unknown argument '$1' (expected --dry-run or nothing)" >&2; exit 2 ;;
esac
OUT=${OUT:-/tmp/drx-gpu-check}
mkdir -p "$OUT"
if [ "$DRY" = 1 ]; then
  PY=${PYTHON:-.venv/bin/python}
  DEV=cpu PRESET=tiny PREC=fp32 BATCH=8 STEPS=2 WARMUP=1 K=2 TREE=4 SECONDS_PER=1 WORKERS=0,1 LIMIT=600
  # One block per tower and random weights: every layer kind, a quarter of the graph to compile on
  # the CPU, and no built-in weights to build.
  SMALL=(--set model.backbone.kwargs.depth=1 --set model.prior.arch_overrides.vision_cfg.layers=1
         --set model.prior.arch_overrides.text_cfg.layers=1 --set model.backbone.pretrained=null --set model.prior.checkpoint=null)
else
  PY=python3
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  DEV=cuda PRESET=paper PREC=bf16 BATCH=32 STEPS=30 WARMUP=5 K=4 TREE=64 SECONDS_PER=4 WORKERS=1,2,4,8 LIMIT=300
  SMALL=()
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt"
fi
export PYTHONUNBUFFERED=1
$PY -c "import torch, timm, open_clip; print('torch', torch.__version__, 'timm', timm.__version__, 'open_clip', open_clip.__version__)" | tee -a "$OUT/gpu.txt"
FAILED=()
step() {  # step NAME COMMAND...: runs it under a time limit, keeps its output, never stops the script
  local name=$1; shift
  if [[ " ${SKIP:-} " == *" $name "* ]]; then echo "== $name: skipped (SKIP)"; return; fi
  echo "== $name: $*"
  timeout "$LIMIT" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  if [ "$rc" != 0 ]; then FAILED+=("$name"); echo "!! $name failed (exit $rc); see $OUT/$name.log"; fi
  tail -n 12 "$OUT/$name.log"
}
MODEL=(-m drx.cli bench model --preset "$PRESET" --device "$DEV" --precision "$PREC" --batch "$BATCH"
       --steps "$STEPS" --warmup "$WARMUP" --no-diff ${SMALL[@]+"${SMALL[@]}"})
step model_eager "$PY" "${MODEL[@]}" --variants full --set train.compile=false --json "$OUT/model_eager.json"
step model_compiled "$PY" "${MODEL[@]}" --variants full --set train.compile=true --json "$OUT/model_compiled.json"
step model_packed "$PY" "${MODEL[@]}" --variants full --set train.compile=true --packed "$K" --json "$OUT/model_packed.json"
step model_variants "$PY" "${MODEL[@]}" --set train.compile=false --json "$OUT/model_variants.json"  # eager: four more compiles would not fit
[ "$DRY" = 0 ] && step breakdown "$PY" deploy/gpu_breakdown.py  # eager per-component times (CUDA events)
FEED=$($PY deploy/gpu_summary.py "$OUT" --images-per-s 2>/dev/null || echo 0)
FEED_ARGS=(); [ "$FEED" != 0 ] && FEED_ARGS=(--feed "$FEED")
# The KonIQ-sized tree is made here by `drx bench data koniq --synthetic-tree .gpu-tree/koniq
# --tree-images 64` and carried: it is made from the embedded benchmark's photographs, which the
# GPU machine cannot fetch. The dry run makes a small one.
TREE_DIR=.gpu-tree/koniq
[ "$DRY" = 1 ] && TREE_DIR=$OUT/koniq-tree && $PY -c "import sys; from pathlib import Path; from drx.testing.synthetic import write_benchmark_tree; write_benchmark_tree('koniq', Path(sys.argv[1]), $TREE)" "$TREE_DIR"
step data "$PY" -m drx.cli bench data koniq --root "$TREE_DIR" --crop-size 384 --resize 384 --crops 3 \
  --workers "$WORKERS" --seconds "$SECONDS_PER" ${FEED_ARGS[@]+"${FEED_ARGS[@]}"} --json "$OUT/data.json"
$PY deploy/gpu_summary.py "$OUT" --failed "${FAILED[*]:-}"
