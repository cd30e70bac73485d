"""Learning curves: how fast variants of a config learn to follow their captions, measured by the
shapes evaluator on EMA samples (caption accuracy, shape, colour, cell) every K steps.

  python benchmarks/learning_curve.py --steps 12000 --every 1000 --out curves.jsonl \
      --variant base --variant lazy_gp:loss.gp_every=4,train.batch_size=32

A variant is NAME[:key=value,...] (overrides of --config, default configs/shapes_quick.py; not
of its data.* settings, which all variants share, nor of train.py's loop settings such as
train.steps: --steps and --every set the run). The first --num_train / --num_test records of
the config's captioned_shapes build (built if missing, as train.py does) are read into memory;
unlike train.py the loop does not flip images. The evaluator is trained on those train images
first; its real-test accuracy is printed as the ceiling. One JSON line per (variant, step) in
--out; its d_loss and g_loss are means over the steps since the variant's previous line.
"""
from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmimg_jax import cli  # noqa: E402
from llmimg_jax.eval import evaluator as ev  # noqa: E402
from llmimg_jax.eval.shapes_eval import ShapesEvaluator, SplitData, load_split  # noqa: E402
from llmimg_jax.train import loop  # noqa: E402
from llmimg_jax.train.config import due, unknown_keys  # noqa: E402
from llmimg_jax.train.mesh import compiler_options, make_mesh  # noqa: E402
from llmimg_jax.train.state import build_models, build_text  # noqa: E402
from llmimg_jax.train.step import generate_images  # noqa: E402
from llmimg_jax.train.summaries import window_means  # noqa: E402


# train.py's loop settings, which run_variant's loop does not read (as eval.*).
_LOOP_ONLY = ("train.steps", "train.log_every", "train.sample_every", "train.ckpt_every",
              "train.keep_checkpoints", "train.max_bad_steps", "train.sample_prompts",
              "train.samples_per_prompt")


def parse_value(value: str):
  """A Python literal ('True', '0', '()') as such, anything else as the string itself."""
  try:
    return ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return value  # a plain string, e.g. loss.gp=none


def load_config(path: str, overrides: str):
  spec = importlib.util.spec_from_file_location("experiment_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  items = [item for item in overrides.split(",") if item]
  if bad := [item for item in items if "=" not in item]:
    raise ValueError(f"{bad[0]!r} is not key=value (e.g. loss.gp_every=4)")
  try:
    config.update_from_flattened_dict(
        {k: parse_value(v) for k, v in (item.split("=", 1) for item in items)})
  except KeyError as e:  # a key below a leaf or below a group the config does not have
    raise ValueError(f"{path}: {e.args[0]}") from None
  # ConfigDict adds an unknown leaf of a known group (loss.gp_evry=4) as a new field, which
  # nothing reads: the variant would train the base config under its name.
  if unknown := unknown_keys(config, module.get_config()):
    raise ValueError(f"{path}: {unknown[0]}")
  return config


def run_variant(config, train: SplitData, test: SplitData, evaluator: ShapesEvaluator, steps: int,
                every: int, num_eval: int, out, name: str):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  tokenizer, t5_config, pretrained = build_text(config)
  models = build_models(config, t5_config)
  mesh = make_mesh(jax.devices()[:1])
  state = loop.create_state(models, mesh, config.seed, pretrained)
  step_fn = loop.jit_train_step(models, mesh)
  per = len(train.captions[0])
  tokens = tokenizer([c for caps in train.captions for c in caps])  # [n * per, L]
  n = len(train.images)
  eval_captions = [caps[0] for caps in test.captions[:num_eval]]
  eval_tokens = tokenizer(eval_captions)
  z = jax.random.normal(jax.random.PRNGKey(1), (len(eval_captions), config.model.z_dim),
                        np.float32)
  sample = jax.jit(functools.partial(generate_images, models),
                   compiler_options=compiler_options(mesh))
  rng = np.random.default_rng(config.seed)
  b = config.train.batch_size
  t0, train_time, window = time.perf_counter(), 0.0, []
  for step in range(1, steps + 1):
    idx = rng.integers(0, n, b)
    rows = idx * per + rng.integers(0, per, b)
    batch = {"image": train.images[idx], "input_ids": tokens["input_ids"][rows],
             "attention_mask": tokens["attention_mask"][rows]}
    state, metrics = step_fn(state, batch)
    window.append({k: metrics[k] for k in ("d_loss", "g_loss", "finite")})
    if due(step, every, steps):
      # Means over the updates since the last row, as train.py logs them: one step's d_loss
      # held a lazy penalty (loss.gp_every) at no --every that is a multiple of gp_every.
      fetched, window = jax.device_get(window), []
      losses = window_means(fetched)
      train_time += time.perf_counter() - t0
      images = np.asarray(sample(state.ema_params, state.text_params, z,
                                 jnp.asarray(eval_tokens["input_ids"]),
                                 jnp.asarray(eval_tokens["attention_mask"])))
      row = {"variant": name, "step": step, "train_seconds": round(train_time, 1),
             **{k: round(float(v), 4) for k, v in evaluator.score(images, eval_captions).items()},
             "d_loss": losses["d_loss"], "g_loss": losses["g_loss"]}
      print(json.dumps(row), flush=True)
      out.write(json.dumps(row) + "\n")
      out.flush()
      np.save(Path(out.name).with_name(f"{name}_{step}.npy"), images[:64])
      t0 = time.perf_counter()


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="configs/shapes_quick.py")
  p.add_argument("--variant", action="append", default=[])
  p.add_argument("--steps", type=int, default=12000)
  p.add_argument("--every", type=int, default=1000)
  p.add_argument("--num_train", type=int, default=50_000)
  p.add_argument("--num_test", type=int, default=2_000)
  p.add_argument("--num_eval", type=int, default=500)
  p.add_argument("--evaluator_steps", type=int, default=ev.TrainSettings.steps)
  p.add_argument("--out", default="curves.jsonl")
  args = p.parse_args()
  for flag, value, what in (("--steps", args.steps, "training steps per variant"),
                            ("--every", args.every, "steps between evaluations"),
                            ("--num_train", args.num_train, "train records read"),
                            ("--num_test", args.num_test, "test records read"),
                            ("--num_eval", args.num_eval, "test captions sampled per evaluation"),
                            ("--evaluator_steps", args.evaluator_steps, "the evaluator's steps")):
    if value < 1:
      p.error(f"{flag} {value}: give 1 or more ({what}).")
  if args.num_eval > args.num_test:  # would score only the --num_test read
    p.error(f"--num_eval {args.num_eval} exceeds --num_test {args.num_test}: the evaluations "
            "sample test captions; raise --num_test or lower --num_eval.")
  variants = []  # every variant's config read before hours of training the ones before it
  for variant in args.variant or ["base"]:
    name, _, overrides = variant.partition(":")
    # Its rows are told apart by name, and its samples saved as NAME_STEP.npy beside --out.
    if not name or "/" in name or name == "real" or name in [n for n, _ in variants]:
      p.error(f"--variant {variant!r}: give each variant its own name before the ':', without "
              "'/' and other than 'real' (the real images' row).")
    keys = [item.split("=")[0] for item in overrides.split(",") if item]
    if data := [k for k in keys if k.startswith("data.")]:
      p.error(f"--variant {variant!r}: {data[0]!r}: every variant trains on --config's data "
              "(read once, not flipped); give a config file with that data as --config.")
    if loop_only := [k for k in keys if k in _LOOP_ONLY or k.startswith("eval.")]:
      p.error(f"--variant {variant!r}: {loop_only[0]!r} is a setting of train.py's loop, which "
              "this script does not run (--steps and --every set its run; no checkpoints, "
              "samples, evaluation or divergence stop).")
    try:
      variants.append((name, load_config(args.config, overrides)))
    except (ValueError, KeyError, TypeError) as e:
      p.error(f"--variant {variant!r}: {e}")

  base = load_config(args.config, "")
  t0 = time.perf_counter()
  train = load_split(base.data, "train", args.num_train)
  test = load_split(base.data, "test", args.num_test)
  params = ev.train_net(train.images, ev.cell_labels(train.gt),
                        ev.TrainSettings(steps=args.evaluator_steps))
  evaluator = ShapesEvaluator(params, base.data.image_size)
  acc = ev.cell_accuracy(evaluator.read(test.images), ev.cell_labels(test.gt))
  real = evaluator.score(test.images[:args.num_eval], [c[0] for c in test.captions[:args.num_eval]])
  print(f"evaluator trained in {time.perf_counter() - t0:.0f}s; real test cells {acc}; real "
        f"captions {real}", flush=True)
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  with open(args.out, "a") as out:
    out.write(json.dumps({"variant": "real", **real}) + "\n")
    for name, config in variants:
      run_variant(config, train, test, evaluator, args.steps, args.every, args.num_eval, out, name)


if __name__ == "__main__":
  with cli.ends_on_signal("benchmarks/learning_curve.py",
                          "--out holds the rows of the evaluations made so far."):
    main()
