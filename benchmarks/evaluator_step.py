"""The shapes evaluator's training step (evaluator.adam_step, as train_net runs it) compiled with
XLA's defaults and with the options it uses (mesh.compiler_options), alternating in one process.

  python benchmarks/evaluator_step.py                 # crops of 32px images, as for center_32
  python benchmarks/evaluator_step.py --resolution 64 --rounds 30

Random crops and labels; a batch of TrainSettings' size (64 occupied cells + 16 empty ones).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import timing  # noqa: E402
from benchmarks.profile_step import parse_args_reusing_host_memory  # noqa: E402
from llmimg_jax.eval import evaluator as ev  # noqa: E402
from llmimg_jax.train.mesh import compiler_options  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--resolution", type=int, default=32, help="the images' side (px)")
  parser.add_argument("--rounds", type=int, default=20)
  args = parse_args_reusing_host_memory(parser)
  settings = ev.TrainSettings()
  n, p = settings.batch_size + settings.batch_size // 4, ev.crop_size(args.resolution)
  rng = np.random.default_rng(0)
  crops = rng.integers(0, 256, (n, p, p, 3)).astype(np.uint8)  # [n, P, P, 3]
  cells = rng.integers(0, ev.NUM_CELLS, n).astype(np.int32)  # [n]
  labels = {"present": rng.integers(0, 2, n).astype(np.int32)}  # [n] each
  labels.update({a: rng.integers(0, k, n).astype(np.int32) for a, k in ev.NUM_CLASSES.items()})
  net, tx = ev.CellNet(), optax.adam(settings.learning_rate)
  params = jax.jit(net.init)(jax.random.PRNGKey(0), crops[:2], cells[:2])["params"]
  opt_state = tx.init(params)
  step = functools.partial(ev.adam_step, net, tx, settings.label_smoothing)
  fns, losses = {}, {}
  variants = {"none": {}, "train": compiler_options()}
  for name, options in variants.items():
    compiled = jax.jit(step, compiler_options=options).lower(
        params, opt_state, crops, cells, labels).compile()

    def call(compiled=compiled, name=name):
      losses[name] = float(compiled(params, opt_state, crops, cells, labels)[2])
    fns[name] = call
  times = timing.alternate(fns, warmup=3, iters=args.rounds)
  print(f"evaluator training step, {n} crops of {p}x{p} ({args.resolution}px images):")
  for name, t in times.items():
    print(f"  {name:5s} {str(variants[name]):75s} median {t['median_s'] * 1e3:6.1f} ms  min "
          f"{t['min_s'] * 1e3:6.1f} ms")
  print(f"  losses {losses}; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
