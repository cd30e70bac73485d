"""A/B of input-pipeline settings on the training loop's steps, alternating in one process.

  python benchmarks/loop_data.py --baseline read_buffer_size=500 --data read_buffer_size=0

Each step is what train.py's loop does: the next batch from the grain pipeline, to_global_batch
and the jitted step (dispatched asynchronously, so reading the next batch overlaps the step);
metrics are fetched at the end of each block of --block steps. configs/shapes_quick.py on all
devices (the README's job); each variant is a ';'-separated list of KEY=VALUE changes to
config.data (data.KEY=VALUE also reads), with its own iterator; one compiled step serves them
all. Reports the median and minimum ms per step over --rounds blocks per variant (order reversed
every other round), and whether every variant read the same batches as the baseline.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import timing  # noqa: E402
from benchmarks.learning_curve import parse_value  # noqa: E402
from benchmarks.profile_step import parse_args_reusing_host_memory  # noqa: E402
from llmimg_jax import cli  # noqa: E402
from configs import shapes_quick  # noqa: E402
from llmimg_jax.data.global_batch import to_global_batch  # noqa: E402
from llmimg_jax.data.pipeline import close_iterator, make_iterator  # noqa: E402
from llmimg_jax.train import loop  # noqa: E402
from llmimg_jax.train.mesh import make_mesh  # noqa: E402
from llmimg_jax.train.state import build_models, build_text  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", action="append", default=[], metavar="KEY=VALUE[;...]")
  parser.add_argument("--baseline", default="", metavar="KEY=VALUE[;...]",
                      help="default: shapes_quick's data config as it is")
  parser.add_argument("--rounds", type=cli.at_least(1), default=10)
  parser.add_argument("--block", type=cli.at_least(1), default=50, help="steps per timed call")
  args = parse_args_reusing_host_memory(parser)
  config = shapes_quick.get_config()
  variants = {}
  for name in [args.baseline, *args.data]:
    data = config.data.copy_and_resolve_references()
    for item in filter(None, name.split(";")):
      key, sep, value = item.partition("=")
      key = key.removeprefix("data.")
      if not sep or key not in data:
        parser.error(f"{item!r}: expected KEY=VALUE with one of {sorted(data)} as KEY.")
      try:
        data[key] = parse_value(value)
      except (TypeError, ValueError):  # ml_collections keeps a field's type
        parser.error(f"{item!r}: config.data.{key} must be of type "
                     f"{type(config.data[key]).__name__}, like its default "
                     f"{config.data[key]!r}.")
    if (name := name or "shapes_quick") in variants:  # one iterator would time both
      parser.error(f"the variant {name!r} is given twice; give each once.")
    variants[name] = data
  tokenizer, t5_config, _ = build_text(config)
  models = build_models(config, t5_config)
  mesh = make_mesh(jax.devices())
  step = loop.jit_train_step(models, mesh)
  holder = {"state": loop.create_state(models, mesh, config.seed)}
  iterators, first = {}, {}
  for name, data in variants.items():
    iterators[name] = make_iterator(data, tokenizer, batch_size_per_host=config.train.batch_size,
                                    seed=config.seed)
    first[name] = [next(iterators[name]) for _ in range(args.block)]

  def block(name: str) -> None:
    metrics = []
    for _ in range(args.block):
      batch = to_global_batch(next(iterators[name]), mesh)
      holder["state"], m = step(holder["state"], batch)
      metrics.append(m)
    jax.device_get(metrics)

  fns = {name: (lambda name=name: block(name)) for name in variants}
  times = timing.alternate(fns, warmup=1, iters=args.rounds)
  baseline = next(iter(variants))
  for name, t in times.items():
    same = all(np.array_equal(a[k], b[k]) for a, b in zip(first[name], first[baseline])
               for k in a)
    ms = {k: t[k] / args.block * 1e3 for k in ("median_s", "min_s", "cpu_median_s")}
    print(f"{name:40s} median {ms['median_s']:6.1f} ms/step  min {ms['min_s']:6.1f}  process "
          f"CPU {ms['cpu_median_s']:6.1f} ms/step  (first {args.block} batches "
          f"{'equal to' if same else 'UNLIKE'} the baseline's)")
  for it in iterators.values():
    close_iterator(it)
  print(f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  with cli.ends_on_signal("benchmarks/loop_data.py",
                          "the variants were not all timed: rerun the command."):
    main()
