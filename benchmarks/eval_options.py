"""The evaluation's programs compiled with XLA's defaults ('none') and with the options they use
('train', mesh.compiler_options), alternating in one process.

  python benchmarks/eval_options.py                          # the shapes evaluator's training step
  python benchmarks/eval_options.py --program read --resolution 64
  python benchmarks/eval_options.py --program inception --rounds 10

Programs, on random inputs and weights: 'step', the shapes evaluator's training step
(evaluator.adam_step as train_net runs it: 64 occupied and 16 empty cells' crops of RES-px
images); 'read', the evaluator reading 256 RES-px images (evaluator.apply_batched's batch);
'inception', FID's InceptionV3 on 50 RES-px images (resized to 299, InceptionFeatures' batch).
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
from llmimg_jax import cli  # noqa: E402
from llmimg_jax.eval import evaluator as ev, inception  # noqa: E402
from llmimg_jax.gan.common import SUPPORTED_RESOLUTIONS  # noqa: E402
from llmimg_jax.train.mesh import compiler_options  # noqa: E402


def program(name: str, resolution: int, rng: np.random.Generator):
  """(function, its arguments, what they are) of one of the evaluation's programs."""
  images = lambda n: rng.integers(0, 256, (n, resolution, resolution, 3)).astype(np.uint8)
  if name == "inception":
    net, x = inception.FIDInceptionV3(), images(50).astype(np.float32) / 255.0
    params = jax.jit(net.init)(jax.random.PRNGKey(0), x[:1])
    return net.apply, (params, x), f"InceptionV3 on 50 images of {resolution}px"
  if name == "read":
    net, x = ev.EvaluatorNet(), images(256)
    params = jax.jit(net.init)(jax.random.PRNGKey(0), x[:1])["params"]
    return functools.partial(ev.read_cells, net), (params, x), (
        f"reading 256 images of {resolution}px")
  settings = ev.TrainSettings()
  n, p = settings.batch_size + settings.batch_size // 4, ev.crop_size(resolution)
  crops = rng.integers(0, 256, (n, p, p, 3)).astype(np.uint8)  # [n, P, P, 3]
  cells = rng.integers(0, ev.NUM_CELLS, n).astype(np.int32)  # [n]
  labels = {"present": rng.integers(0, 2, n).astype(np.int32)}  # [n] each
  labels.update({a: rng.integers(0, k, n).astype(np.int32) for a, k in ev.NUM_CLASSES.items()})
  net, tx = ev.CellNet(), optax.adam(settings.learning_rate)
  params = jax.jit(net.init)(jax.random.PRNGKey(0), crops[:2], cells[:2])["params"]
  step = functools.partial(ev.adam_step, net, tx, settings.label_smoothing)
  return step, (params, tx.init(params), crops, cells, labels), (
      f"the evaluator's training step, {n} crops of {p}x{p} ({resolution}px images)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--program", choices=["step", "read", "inception"], default="step")
  parser.add_argument("--resolution", type=int, default=32, choices=SUPPORTED_RESOLUTIONS,
                      help="the images' side (px)")
  parser.add_argument("--rounds", type=cli.at_least(1), default=20)
  args = parse_args_reusing_host_memory(parser)
  fn, fn_args, what = program(args.program, args.resolution, np.random.default_rng(0))
  variants, fns, outputs = {"none": {}, "train": compiler_options()}, {}, {}
  for name, options in variants.items():
    compiled = jax.jit(fn, compiler_options=options).lower(*fn_args).compile()

    def call(compiled=compiled, name=name):
      outputs[name] = jax.tree.leaves(jax.block_until_ready(compiled(*fn_args)))
    fns[name] = call
  times = timing.alternate(fns, warmup=3, iters=args.rounds)
  print(f"{what}:")
  for name, t in times.items():
    print(f"  {name:5s} {str(variants[name]):75s} median {t['median_s'] * 1e3:7.1f} ms  min "
          f"{t['min_s'] * 1e3:7.1f} ms")
  largest = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                for a, b in zip(outputs["none"], outputs["train"]))
  print(f"  largest difference between the two outputs {largest:.3g}; load "
        f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  with cli.ends_on_signal("benchmarks/eval_options.py",
                          "the programs were not all timed: rerun the command."):
    main()
