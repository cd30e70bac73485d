"""Helpers shared by the sampling tests: a run's workdir saved from a host-drawn state, the
environment of a one-device process, the generator's image for comparisons, and black samples to
write."""
from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from llmimg_jax.train import checkpoint
from llmimg_jax.train.mesh import make_mesh
from llmimg_jax.train.state import build_models, build_text, init_state
from llmimg_jax.train.step import encode_text

STEPS = (1, 2)


@dataclasses.dataclass
class Run:
  workdir: Path
  ema: dict[int, object]  # step -> the saved ema_params (host copies)
  g_params: object


def save_run(workdir: Path, config) -> Run:
  """`run`'s workdir for any config (e.g. one trained on other data)."""
  assert jax.device_count() == 8, "tests/conftest.py should simulate 8 CPU devices"
  _, t5_config, pretrained = build_text(config)
  models = build_models(config, t5_config)
  state = _quick_state(models, pretrained)
  manager = checkpoint.make_manager(workdir, config)
  ema = {}
  for step in STEPS:
    scaled = jax.tree.map(lambda x, s=step: x * (1.0 + 0.1 * s), state.g_params)
    checkpoint.save(manager, step, state.replace(step=np.int32(step), ema_params=scaled), None,
                    config)
    ema[step] = jax.device_get(scaled)
  manager.wait_until_finished()
  manager.close()
  (workdir / "config.json").write_text(config.to_json(indent=2))
  return Run(workdir, ema, jax.device_get(state.g_params))


def _quick_state(models, pretrained):
  """A TrainState replicated on the 8-device mesh like create_state's, without compiling the
  init (~12 s here): shapes from eval_shape, values drawn on the host (unit scales, zero biases,
  fan-in-scaled kernels and embeddings), then placed with create_state's sharding."""
  abstract = jax.eval_shape(functools.partial(init_state, models), jax.random.PRNGKey(0),
                            pretrained)
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      return np.zeros(leaf.shape, leaf.dtype)
    if "scale" in name or ("norm" in name and "kernel" not in name):
      return np.ones(leaf.shape, leaf.dtype)
    if "bias" in name or len(leaf.shape) < 2:
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

  host = jax.tree_util.tree_map_with_path(fill, abstract)
  return jax.device_put(host, NamedSharding(make_mesh(), P()))


def one_device_env() -> dict[str, str]:
  """The environment of a plain 1-CPU JAX process (no simulated devices)."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "xla_force_host_platform_device_count" not in f)
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(
      [str(Path(__file__).parents[2]), *filter(None, [env.get("PYTHONPATH")])])
  return env


def generator_output(models, ema_params, text_params, z, ids, mask) -> np.ndarray:
  """The generator's float image [R, R, 3] in [-1, 1] for noise z [1, z_dim] and one tokenized
  text ids, mask [1, L], from the modules' apply functions."""
  words, sent = encode_text(models, text_params, ids, mask)
  return np.asarray(models.generator.apply({"params": ema_params}, z, sent, words, mask))[0]


def assert_uint8_of(image: np.ndarray, x: np.ndarray) -> None:
  """`image` is x's [-1, 1] -> [0, 255] mapping, up to XLA's rounding of another batch shape."""
  want = np.clip(np.round((x + 1.0) * 127.5), 0, 255)
  diff = np.abs(image.astype(np.float64) - want)
  assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())


def black_samples(num_prompts: int, num_per_prompt: int):
  """A SampleResult of black 8x8 images, for write_samples."""
  from llmimg_jax.sample.sampler import SampleResult  # pylint: disable=g-import-not-at-top
  prompts = [f"prompt {i}" for i in range(num_prompts)]
  return SampleResult(np.zeros((num_prompts * num_per_prompt, 8, 8, 3), np.uint8), prompts,
                      prompts, expanded=False, seed=0, num_per_prompt=num_per_prompt,
                      truncation=None, step=1, seconds=1.0, compile_seconds=0.0)
