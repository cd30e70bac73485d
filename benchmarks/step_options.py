"""A/B of XLA compile options on the real train step, alternating in one process.

  python benchmarks/step_options.py --bench 64 \
      --options xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT

Each --options is one variant (key=value;key=value, XLA DebugOptions); 'none' is XLA's defaults
and 'train' what train.py uses (loop.compiler_options). --bench RES is run.py's GAN step config
(nf 32, batch 32); without it, configs/shapes_quick.py. Random batch, one device.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import timing  # noqa: E402
from benchmarks.learning_curve import parse_value  # noqa: E402
from benchmarks.profile_step import models_and_batch  # noqa: E402
from llmimg_jax.train import loop  # noqa: E402
from llmimg_jax.train.step import train_step  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--bench", type=int, default=0, metavar="RES")
  parser.add_argument("--options", action="append", default=[])
  parser.add_argument("--rounds", type=int, default=6)
  args = parser.parse_args()
  cfg, models, batch = models_and_batch(args.bench)
  mesh = loop.make_mesh(jax.devices()[:1])
  holders, fns = {}, {}
  for name in ["none", *args.options]:
    options = (loop.compiler_options(mesh) if name == "train" else {} if name == "none" else
               {k: parse_value(v) for k, v in (kv.split("=", 1) for kv in name.split(";"))})
    step = jax.jit(functools.partial(train_step, models), donate_argnums=0,
                   compiler_options=options)
    holder = holders[name] = {"state": loop.create_state(models, mesh, cfg.seed)}
    t0 = time.perf_counter()
    compiled = step.lower(holder["state"], batch).compile()
    print(f"{name}: compile {time.perf_counter() - t0:.1f} s", flush=True)

    def call(compiled=compiled, holder=holder):
      holder["state"], holder["metrics"] = compiled(holder["state"], batch)
      jax.block_until_ready(holder["state"])

    fns[name] = call
  times = timing.alternate(fns, warmup=2, iters=args.rounds)
  for name, t in times.items():
    print(f"{name:70s} median {t['median_s'] * 1e3:7.1f} ms  min {t['min_s'] * 1e3:7.1f} ms  "
          f"(d_loss after the last step {float(holders[name]['metrics']['d_loss']):.6f})")
  print(f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
