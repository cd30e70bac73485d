#!/usr/bin/env bash
# The GPU rows of benchmarks/RESULTS.md, in one call on a lent GPU machine (see RESULTS.md):
#   bash benchmarks/gpu.sh OUTDIR
# writes OUTDIR/gpu_{float32,bfloat16}.{json,log} and nvidia_smi.txt;
# RESULTS.md keeps the JSON as benchmarks/results/gpu_<gpu>_{f32,bf16}.json (copied by hand).
# That machine has jax[cuda], flax, optax, orbax, torch and transformers but not ml_collections,
# grain or TFDS; their wheels travel in .whl/ (ignored via .git/info/exclude). The set that ran on
# 2026-12-04 (Python 3.12 there): `pip download --no-deps --only-binary=:all: --python-version 3.12
# --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
# --platform manylinux2014_x86_64 -d .whl` array_record==0.8.6 grain==0.2.18 ml_collections==1.1.0
# tensorflow-datasets==4.9.10 tensorflow-metadata==1.21.0 immutabledict==4.3.1 toml==0.10.2
# portpicker==1.6.0 googleapis-common-protos==1.76.0 protobuf==7.36.2 (tensorflow-metadata's
# generated code needs protobuf >= 6.31), plus `pip wheel --no-deps -w .whl promise==2.3` (no wheel
# on PyPI). Then: run(command="bash benchmarks/gpu.sh $OUT", carry=[".whl"]), ~500 s on the H200
# of 2026-12-04; the H100 of 2026-12-05 compiled slower (a 64px step ~50 s) and reached only the
# 32px rows of each dtype in 230 s: there, one dtype per call
# (GPU_DTYPES=float32 GPU_BENCH_TIMEOUT=570).
set -uo pipefail
out=${1:-/tmp/gpu_bench}; mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia_smi.txt"
python3 -c "import benchmarks.run" || exit 1  # a missing wheel, in seconds
for dtype in ${GPU_DTYPES:-float32 bfloat16}; do
  timeout ${GPU_BENCH_TIMEOUT:-250} python3 benchmarks/run.py --device gpu --dtype $dtype \
    --no-compile --json "$out/gpu_$dtype.json" --overwrite 2>&1 |
    grep -v -E "Warning|warn\(|cuda_timer" | tee "$out/gpu_$dtype.log"
done
