"""A/B of XLA compile options and code switches on the real train step, alternating in one process.

  python benchmarks/step_options.py --bench 64 \
      --options xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT
  python benchmarks/step_options.py --bench 64 --baseline train \
      --options "train;llmimg_jax.gan.layers.MATMUL_REDUCTIONS=False"

Each --options is one variant, items separated by ';': 'none' (XLA's defaults), 'train' (the
options of train.py's step and of sampling, mesh.compiler_options), an XLA DebugOptions
key=value, or a module attribute (a dotted key, e.g.
llmimg_jax.gan.layers.MATMUL_REDUCTIONS=False) set while that variant is traced; a value
'@package.module.name' is that object (e.g. another conv function:
llmimg_jax.gan.discriminator.conv4x4_stride2=@llmimg_jax.gan.discriminator._conv4x4_stride2_direct).
The step runs in batch chunks as train.py's does (loop.batch_chunks; off with
llmimg_jax.train.loop.CPU_BATCH_CHUNKS=1). --baseline is the first variant (default 'none').
--bench RES is run.py's GAN step config (nf 32, batch 32); without it, configs/shapes_quick.py.
Random batch, one device.
--sampling times generate_images (EMA G + T5 to uint8 images) instead of the train step.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import timing  # noqa: E402
from benchmarks.profile_step import (  # noqa: E402
    check_switch, models_and_batch, module_attributes, parse_args_reusing_host_memory,
    switch_value)
from llmimg_jax import cli  # noqa: E402
from llmimg_jax.gan.common import SUPPORTED_RESOLUTIONS  # noqa: E402
from llmimg_jax.train import loop  # noqa: E402
from llmimg_jax.train.mesh import compiler_options, make_mesh  # noqa: E402
from llmimg_jax.train.step import generate_images, train_step  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--bench", type=int, default=0, choices=(0, *SUPPORTED_RESOLUTIONS),
                      metavar="RES")
  parser.add_argument("--options", action="append", default=[])
  parser.add_argument("--baseline", default="none")
  parser.add_argument("--rounds", type=cli.at_least(1), default=6)
  parser.add_argument("--sampling", action="store_true",
                      help="time generate_images (EMA G + T5 sampling) instead of the step")
  args = parse_args_reusing_host_memory(parser)
  for i, name in enumerate(variants := [args.baseline, *args.options]):  # before any compiling
    items = name.split(";")
    if bad := [item for item in items if item not in ("none", "train") and "=" not in item]:
      parser.error(f"variant {name!r}: {bad[0]!r} is none of 'none', 'train', an XLA option "
                   "KEY=VALUE or a module switch package.module.ATTR=VALUE.")
    for key, value in (item.split("=", 1) for item in items if "=" in item):
      if "." in key:
        check_switch(parser, f"variant {name!r}", key, value)
    if name in variants[:i]:  # one result per name: it was compiled again and dropped
      parser.error(f"variant {name!r} is given twice (--baseline is the first); for an A/A "
                   f"check of noise, spell the second otherwise, e.g. '{name};none'.")
  cfg, models, batch = models_and_batch(args.bench)
  mesh = make_mesh(jax.devices()[:1])
  holders, fns = {}, {}
  z = jax.random.normal(jax.random.PRNGKey(1), (cfg.train.batch_size, cfg.model.z_dim),
                        np.float32)
  for name in [args.baseline, *args.options]:
    options, switches = {}, {}
    for item in name.split(";"):
      if item in ("none", "train"):
        options.update(compiler_options(mesh) if item == "train" else {})
        continue
      key, value = item.split("=", 1)
      (switches if "." in key else options)[key] = switch_value(value)
    holder = holders[name] = {"state": loop.create_state(models, mesh, cfg.seed)}
    t0 = time.perf_counter()
    with module_attributes(switches):
      if args.sampling:
        state = holder["state"]
        holder["sample_args"] = (state.ema_params, state.text_params, z, batch["input_ids"],
                                 batch["attention_mask"])
        compiled = jax.jit(functools.partial(generate_images, models),
                           compiler_options=options).lower(*holder["sample_args"]).compile()
      else:
        step = functools.partial(train_step, models, batch_chunks=loop.batch_chunks(mesh))
        compiled = jax.jit(step, donate_argnums=0,
                           compiler_options=options).lower(holder["state"], batch).compile()
    print(f"{name}: compile {time.perf_counter() - t0:.1f} s", flush=True)

    def call(compiled=compiled, holder=holder):
      if args.sampling:
        holder["images"] = jax.block_until_ready(compiled(*holder["sample_args"]))
      else:
        holder["state"], holder["metrics"] = compiled(holder["state"], batch)
        jax.block_until_ready(holder["state"])

    fns[name] = call
  times = timing.alternate(fns, warmup=2, iters=args.rounds)
  for name, t in times.items():
    if args.sampling:  # how far each variant's images are from the baseline's
      diff = holders[name]["images"] != holders[args.baseline]["images"]
      check = f"uint8 values unlike the baseline's: {int(diff.sum())} of {diff.size}"
    else:
      check = f"d_loss after the last step {float(holders[name]['metrics']['d_loss']):.6f}"
    print(f"{name:70s} median {t['median_s'] * 1e3:7.1f} ms  min {t['min_s'] * 1e3:7.1f} ms  "
          f"page faults {t['page_faults_median']:.0f}  ({check})")
  print(f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  with cli.ends_on_signal("benchmarks/step_options.py",
                          "the options were not all timed: rerun the command."):
    main()
