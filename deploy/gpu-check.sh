#!/bin/bash
# The GPU checks behind docs/performance.md, run on a lent GPU machine whose Python lacks drx's
# dependencies: they arrive as wheels in .whl/ (Ray trimmed of its Java jar and dashboard build).
# Writes everything under $OUT. DRX_CACHE may point at a carried cache holding the tiny encoder
# (tiny-deit3-v2.pt and .json): the machine cannot download its photographs.
set -x
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
python3 -m zipfile -e .whl/ray-2.60.0-trimmed.zip /tmp/site || exit 1
chmod -R +x /tmp/site/ray/core  # zipfile drops the executable bits of Ray's gcs_server and raylet
export PYTHONPATH=/tmp/site:$PWD DRX_CACHE=${DRX_CACHE:-/tmp/drxcache} PATH=/tmp/site/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch,timm,open_clip,ray,optuna;print(torch.__version__,timm.__version__,open_clip.__version__,ray.__version__,optuna.__version__)" | tee -a "$OUT/gpu.txt"
B="python3 -m drx.cli bench model --preset paper --device cuda --precision bf16 --warmup 5 --steps 30"
$B --batch 32 --impl both --variants full --json "$OUT/bench_full_b32.json" 2>&1 | tail -8 | tee "$OUT/bench.txt"
$B --batch 32 --impl default --no-diff --json "$OUT/bench_variants_b32.json" 2>&1 | tail -8 | tee -a "$OUT/bench.txt"
$B --batch 32 --impl both --variants full --no-diff --set model.backbone.grad_checkpointing=selective --json "$OUT/bench_full_b32_sac.json" 2>&1 | tail -7 | tee -a "$OUT/bench.txt"
python3 deploy/gpu_breakdown.py 2>&1 | tail -12 | tee "$OUT/breakdown.txt"
timeout 300 python3 -m drx.cli ablate gpu_packing --storage /tmp/exp --set train.device=cuda --set model.prior.checkpoint=null 2>&1 | grep -v "^ *$" | tail -25 | tee "$OUT/ray.txt"
python3 -m drx.cli report /tmp/exp/gpu_packing --out /tmp/rep --no-html 2>&1 | tail -30 >> "$OUT/ray.txt"
cp /tmp/rep/results.csv "$OUT/gpu_packing_results.csv" 2>/dev/null
ls -la "$OUT"
