"""Where the real train_step's time goes on CPU: compile time, FLOPs, ms/call, and the HLO ops
with the most time in a jax.profiler trace (summed per op, trace events of 5 steps). Also for
sampling (--sampling) and T5 greedy generation (--generate).

  python benchmarks/profile_step.py                      # shapes_quick sizes, 1 device
  python benchmarks/profile_step.py --max_length 160     # the text length before the change
  python benchmarks/profile_step.py --bench 32           # run.py's GAN step (nf 32, batch 32)
  taskset -c 0 python benchmarks/profile_step.py --bench 64   # every op, convolutions included
  python benchmarks/profile_step.py --bench 64 --set llmimg_jax.gan.layers.NARROW_CONVS=False
  python benchmarks/profile_step.py --generate           # run.py's T5 generation row
  python benchmarks/profile_step.py --generate --xla \
      xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INVALID   # XLA's own dots

On several cores XLA:CPU runs convolutions asynchronously on its thread pool, so the trace holds
only their launch and the op-time sum leaves them out; pinned to one core they run inline and the
sum is the whole step.

Random batch (image, tokens with 60 valid of max_length); same step as train.py. --generate:
run.py's T5 generation row (t5_bench's t5-small sizes and inputs: batch 8, 64 input tokens with
32-64 valid, exactly 32 new tokens; torch must be importable for that module) with our random
weights, compiled with the arguments text.generate passes.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import glob
import gzip
import importlib
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.learning_curve import parse_value  # noqa: E402
from configs import shapes_quick  # noqa: E402
from llmimg_jax import cli  # noqa: E402
from llmimg_jax.gan.common import SUPPORTED_RESOLUTIONS  # noqa: E402
from llmimg_jax.train.host_memory import reuse_host_memory  # noqa: E402
from llmimg_jax.train.loop import create_state, jit_train_step  # noqa: E402
from llmimg_jax.train.mesh import compiler_options, make_mesh  # noqa: E402
from llmimg_jax.train.state import build_models, build_text  # noqa: E402
from llmimg_jax.text import T5Config, generate  # noqa: E402
from llmimg_jax.text.generate import _generate  # noqa: E402
from llmimg_jax.text.loading import init_params  # noqa: E402
from llmimg_jax.train.step import generate_images  # noqa: E402


def models_and_batch(bench: int = 0, max_length: int | None = None):
  """(config, Models, random batch) of shapes_quick, or of run.py's GAN step at `bench` px."""
  if bench:
    from benchmarks import gan_bench  # imports torch
    cfg = gan_bench.make_config(bench, 32, 32, "float32")
  else:
    cfg = shapes_quick.get_config()
  if max_length:
    cfg.text.max_length = max_length
  models = build_models(cfg, build_text(cfg)[1])
  b, length, res = cfg.train.batch_size, cfg.text.max_length, cfg.model.resolution
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 200, (b, length)).astype(np.int32)
  mask = (np.arange(length)[None] < min(60, length)).repeat(b, 0).astype(np.int32)
  batch = {"image": rng.integers(0, 255, (b, res, res, 3)).astype(np.uint8),
           "input_ids": ids * mask, "attention_mask": mask}
  return cfg, models, batch


def parse_args_reusing_host_memory(parser: argparse.ArgumentParser) -> argparse.Namespace:
  """parser.parse_args() with --no-reuse-host-memory added; without that flag, calls
  host_memory.reuse_host_memory() as train.py does (before JAX's first computation)."""
  parser.add_argument("--no-reuse-host-memory", action="store_true",
                      help="skip host_memory.reuse_host_memory (which train.py calls)")
  args = parser.parse_args()
  if not args.no_reuse_host_memory:
    reuse_host_memory()
  return args


def switch_value(value: str):
  """A module switch's value: '@package.module.name' is that object (e.g. another conv
  function); anything else as parse_value reads it."""
  if not value.startswith("@"):
    return parse_value(value)
  module_name, name = value[1:].rsplit(".", 1)
  return getattr(importlib.import_module(module_name), name)


def check_switch(parser: argparse.ArgumentParser, named: str, key: str, value: str) -> None:
  """parser.error where module switch `key` (package.module.ATTR) or its '@' `value` names
  nothing: the AttributeError came once tracing began, after the variants before it compiled."""
  for dotted in [key] + ([value[1:]] if value.startswith("@") else []):
    module_name, _, attr = dotted.rpartition(".")
    try:
      module = importlib.import_module(module_name)
    except (ImportError, ValueError, TypeError) as e:  # '', '.x': no module name to import
      parser.error(f"{named}: {dotted!r} names nothing: no module {module_name!r} ({e}).")
    if not hasattr(module, attr):
      parser.error(f"{named}: {dotted!r} names nothing: {module_name} has no {attr!r}.")


def greedy_generation_args(batch: int = 8, length: int = 64, new_tokens: int = 32):
  """(args, static kwargs) that `text.generate.generate` passes to its compiled `_generate` for
  run.py's T5 generation row: t5_bench's model sizes and inputs, our random weights, exactly
  `new_tokens` tokens (min_new_tokens = max_new_tokens, as run.py)."""
  from benchmarks import t5_bench  # imports torch and transformers: only for --generate
  config = T5Config(**t5_bench.T5_SMALL)
  ids, mask = t5_bench.inputs(batch, length, config.vocab_size)
  calls = []
  record = lambda *args, **static: calls.append((args, static))
  with module_attributes({"llmimg_jax.text.generate._generate": record}):
    generate(init_params(config, jax.random.PRNGKey(0)), config, ids, mask,
             max_new_tokens=new_tokens, min_new_tokens=new_tokens)
  return calls[0]


@contextlib.contextmanager
def module_attributes(values: dict[str, object]):
  """Sets 'package.module.ATTR' to each value, restoring the old values on exit."""
  old = {}
  for key, value in values.items():
    module_name, attr = key.rsplit(".", 1)
    module = importlib.import_module(module_name)
    old[key] = (module, attr, getattr(module, attr))  # AttributeError names a wrong key
    setattr(module, attr, value)
  try:
    yield
  finally:
    for module, attr, value in old.values():
      setattr(module, attr, value)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--max_length", type=cli.at_least(2), default=None,
                      help="config.text.max_length")
  parser.add_argument("--bench", type=int, default=0, choices=(0, *SUPPORTED_RESOLUTIONS),
                      metavar="RES",
                      help="profile run.py's benchmark config at this resolution instead")
  parser.add_argument("--sampling", action="store_true",
                      help="profile generate_images (EMA G + T5 sampling) instead of the step")
  parser.add_argument("--generate", action="store_true",
                      help="profile T5 greedy generation (t5-small shapes, batch 8, 32 tokens) "
                           "instead of the step")
  parser.add_argument("--xla", action="append", default=[], metavar="OPTION=VALUE",
                      help="an XLA compiler option for the profiled program, on top of its own")
  parser.add_argument("--steps", type=cli.at_least(1), default=20)
  parser.add_argument("--top", type=cli.at_least(0), default=20)
  parser.add_argument("--set", action="append", default=[], metavar="MODULE.ATTR=VALUE",
                      help="a module switch set while tracing, e.g. "
                           "llmimg_jax.gan.layers.NARROW_CONVS=False; '@package.module.name' "
                           "as VALUE is that object")
  args = parse_args_reusing_host_memory(parser)
  if args.generate and (ignored := [flag for flag, value in [
      ("--bench", args.bench), ("--max_length", args.max_length), ("--sampling", args.sampling)]
      if value]):
    parser.error(f"--generate profiles run.py's T5 generation row at its fixed sizes; "
                 f"{', '.join(ignored)} would be ignored: drop it or --generate.")
  for flag, items, form in [("--set", args.set, "MODULE.ATTR=VALUE"),
                            ("--xla", args.xla, "OPTION=VALUE")]:
    if bad := [item for item in items if "=" not in item]:
      parser.error(f"{flag} {bad[0]!r}: expected {form}.")
  for item in args.set:
    check_switch(parser, f"--set {item!r}", *item.split("=", 1))
  switches = {k: switch_value(v) for k, v in (item.split("=", 1) for item in args.set)}
  options = dict(item.split("=", 1) for item in args.xla)
  if args.generate:
    gen_args, static = greedy_generation_args()
  else:
    cfg, models, batch = models_and_batch(args.bench, args.max_length)
    mesh = make_mesh(jax.devices()[:1])
    holder = {"state": create_state(models, mesh, 0)}
  t0 = time.perf_counter()
  if args.generate:
    with module_attributes(switches):
      compiled = _generate.lower(*gen_args, **static).compile(options)

    def call():
      jax.block_until_ready(compiled(*gen_args))
  elif args.sampling:
    s = holder["state"]
    z = np.random.default_rng(1).standard_normal((cfg.train.batch_size, cfg.model.z_dim),
                                                  np.float32)
    sample_args = (s.ema_params, s.text_params, z, batch["input_ids"], batch["attention_mask"])
    with module_attributes(switches):
      # As sample.py, train.py's SampleWriter and run.py compile it, --xla added.
      compiled = jax.jit(functools.partial(generate_images, models),
                         compiler_options=compiler_options(mesh)).lower(
          *sample_args).compile(options)

    def call():
      jax.block_until_ready(compiled(*sample_args))
  else:
    with module_attributes(switches):
      compiled = jit_train_step(models, mesh).lower(holder["state"], batch).compile(options)

    def call():
      holder["state"], _ = compiled(holder["state"], batch)
      jax.block_until_ready(holder["state"])
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # XLA's cost analysis counts a while loop's body once: for generation, the encoder and one
  # decoding step (23.61 GFLOP at 2 new tokens and at 32), not the call's work.
  flops = f"{cost['flops'] / 1e9:.2f} GFLOP" + (
      " in the encoder and one decoding step" if args.generate else "/call")
  print(f"compile {time.perf_counter() - t0:.1f} s, {flops}")
  for _ in range(3):
    call()
  t0, c0 = time.perf_counter(), time.process_time()
  for _ in range(args.steps):
    call()
  print(f"wall {(time.perf_counter() - t0) / args.steps * 1e3:.0f} ms/call, process CPU "
        f"{(time.process_time() - c0) / args.steps * 1e3:.0f} ms/call, load "
        f"{os.getloadavg()[0]:.1f}")
  trace_dir = tempfile.mkdtemp(prefix="llmimg_trace_")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(5):
      call()
  events = json.load(gzip.open(glob.glob(f"{trace_dir}/**/*.trace.json.gz",
                                         recursive=True)[0]))["traceEvents"]
  total = collections.Counter()
  for e in events:
    # Not ops: thunk-executor, Python and dispatch events (with `reuse_host_memory` the whole
    # execution shows up as one CommonPjRtLoadedExecutable event on the calling thread).
    if e.get("ph") == "X" and "dur" in e and not e["name"].startswith(
        ("Thunk", "$", "Pjit", "CommonPjRt", "Wait for")):
      total[e["name"]] += e["dur"]
  hlo = {line.split(" = ")[0].strip().lstrip("%"): line for line in compiled.as_text().splitlines()
         if " = " in line}
  print(f"sum of op time {sum(total.values()) / 5 / 1e3:.0f} ms/call")
  kinds = collections.Counter()
  for name, us in total.items():  # 'transpose_copy_fusion.16' -> 'transpose_copy_fusion'
    kinds[name.split(".")[0]] += us
  print("by kind: " + ", ".join(f"{k} {us / 5 / 1e3:.0f}" for k, us in kinds.most_common(8)))
  for name, us in total.most_common(args.top):
    op = hlo.get(name, "")
    where = op.split('op_name="')[1].split('"')[0] if 'op_name="' in op else ""
    print(f"{us / 5 / 1e3:8.2f} ms/call  {name:32s} {where[:90]}")


if __name__ == "__main__":
  with cli.ends_on_signal("benchmarks/profile_step.py",
                          "no profile was written: rerun the command."):
    main()
