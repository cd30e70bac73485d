#!/usr/bin/env bash
# The GPU rows of benchmarks/RESULTS.md, in one call on a lent GPU machine (see RESULTS.md):
#   bash benchmarks/gpu.sh OUTDIR
# writes OUTDIR/gpu_{float32,bfloat16}.{json,log} and nvidia_smi.txt; RESULTS.md keeps the JSON as
# benchmarks/results/gpu_<gpu>_{f32,bf16}.json (copied by hand).
# That machine has jax[cuda], flax, optax, orbax, torch and transformers but not ml_collections
# or grain; their wheels travel in .whl/ (pip download ... -d .whl, see RESULTS.md).
set -uo pipefail
out=${1:-/tmp/gpu_bench}; mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia_smi.txt"
for dtype in float32 bfloat16; do
  timeout ${GPU_BENCH_TIMEOUT:-250} python3 benchmarks/run.py --device gpu --dtype $dtype \
    --no-compile --json "$out/gpu_$dtype.json" 2>&1 | grep -v -E "Warning|warn\(" | tee "$out/gpu_$dtype.log"
done
