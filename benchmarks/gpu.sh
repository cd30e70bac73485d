#!/usr/bin/env bash
# The GPU rows of benchmarks/RESULTS.md, in one call on a lent GPU machine (see RESULTS.md):
#   bash benchmarks/gpu.sh OUTDIR
# writes OUTDIR/step_forms_64.log, gpu_{float32,bfloat16}.{json,log} and nvidia_smi.txt;
# RESULTS.md keeps the JSON as benchmarks/results/gpu_<gpu>_{f32,bf16}.json (copied by hand).
# That machine has jax[cuda], flax, optax, orbax, torch and transformers but not ml_collections,
# grain or TFDS; their wheels travel in .whl/ (ignored via .git/info/exclude). The set that ran on
# 2026-12-04 (Python 3.12 there): `pip download --no-deps --only-binary=:all: --python-version 3.12
# --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
# --platform manylinux2014_x86_64 -d .whl` array_record==0.8.6 grain==0.2.18 ml_collections==1.1.0
# tensorflow-datasets==4.9.10 tensorflow-metadata==1.21.0 immutabledict==4.3.1 toml==0.10.2
# portpicker==1.6.0 googleapis-common-protos==1.76.0 protobuf==7.36.2 (tensorflow-metadata's
# generated code needs protobuf >= 6.31), plus `pip wheel --no-deps -w .whl promise==2.3` (no wheel
# on PyPI). Then: run(command="bash benchmarks/gpu.sh $OUT", carry=[".whl"]), ~500 s.
set -uo pipefail
out=${1:-/tmp/gpu_bench}; mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia_smi.txt"
python3 -c "import benchmarks.run, benchmarks.step_options" || exit 1  # a missing wheel, in seconds
# RESULTS.md's open GPU question: do the CPU-directed conv forms cost time on a GPU? The same step
# with each swapped for the plain XLA form (tests/benchmarks/test_step_forms.py), alternating.
G="llmimg_jax.gan.generator.upsample_conv3x3=@benchmarks.upsample_conv.plain_upsample_conv3x3"
D="llmimg_jax.gan.discriminator.conv4x4_stride2=@llmimg_jax.gan.discriminator._conv4x4_stride2_direct"
timeout ${GPU_AB_TIMEOUT:-150} python3 benchmarks/step_options.py --bench 64 --baseline train \
  --rounds 20 --options "train;$G" --options "train;$D" --options "train;$G;$D" 2>&1 |
  grep -v -E "Warning|warn\(" | tee "$out/step_forms_64.log"
for dtype in float32 bfloat16; do
  timeout ${GPU_BENCH_TIMEOUT:-250} python3 benchmarks/run.py --device gpu --dtype $dtype \
    --no-compile --json "$out/gpu_$dtype.json" --overwrite 2>&1 |
    grep -v -E "Warning|warn\(" | tee "$out/gpu_$dtype.log"
done
