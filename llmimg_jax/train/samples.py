"""The training run's sample grids: fixed prompts with fixed noise, every `train.sample_every`
steps, generated data parallel over the training mesh."""
from __future__ import annotations

import functools
import io
from pathlib import Path

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from llmimg_jax import output_files
from llmimg_jax.images import captioned_grid
from llmimg_jax.prng import noise_key
from llmimg_jax.train import hosts
from llmimg_jax.train.mesh import compiler_options, from_every_host, rows_per_call
from llmimg_jax.train.state import Models, TrainState
from llmimg_jax.train.step import generate_images


def grid_name(step: int) -> str:
  return f"step_{step:07d}.png"


class SampleWriter:
  """Fixed prompts with fixed noise, rendered from the EMA generator as PNG + TensorBoard, data
  parallel over `mesh` (every host passes the same prompts, and gets every image)."""

  def __init__(self, models: Models, tokenizer, config: ml_collections.ConfigDict, workdir: Path,
               mesh: jax.sharding.Mesh):
    t = config.train
    self.prompts = list(t.sample_prompts)
    n = len(self.prompts) * t.samples_per_prompt
    tokens = tokenizer(self.prompts, fix=(
        "shorten such prompts in config.train.sample_prompts, or raise config.text.max_length "
        "(which the training captions are cut to as well) to keep them whole"))
    ids = np.repeat(tokens["input_ids"], t.samples_per_prompt, axis=0)  # [n, L]
    mask = np.repeat(tokens["attention_mask"], t.samples_per_prompt, axis=0)  # [n, L]
    z = jax.random.normal(noise_key(config.seed + 1), (n, config.model.z_dim),
                          np.float32)  # [n, Z]
    self.num_images = n
    idx = np.arange(rows_per_call(n, mesh.size)) % n  # a multiple of the devices: wrapped
    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    self.inputs = [from_every_host(np.asarray(x)[idx], batch) for x in (z, ids, mask)]
    self.generate = jax.jit(functools.partial(generate_images, models),
                            in_shardings=(replicated,) * 2 + (batch,) * 3,
                            out_shardings=replicated, compiler_options=compiler_options(mesh))
    self.dir = workdir / "samples"

  def images(self, state: TrainState) -> np.ndarray:
    """uint8 [len(prompts) * samples_per_prompt, R, R, 3], prompt-major."""
    images = self.generate(state.ema_params, state.text_params, *self.inputs)
    return np.asarray(jax.device_get(images))[:self.num_images]

  def __call__(self, state: TrainState, step: int, writer) -> Path | None:
    """The grid's path on host 0 (None elsewhere), which writes it: if that fails (a full disk),
    every host stops now, not the others after the distributed service's timeout."""
    images = self.images(state)
    return hosts.on_host_0(lambda: self._write(images, step, writer), "samples_written",
                           f"write the sample grid of step {step} in {self.dir}")

  def _write(self, images: np.ndarray, step: int, writer) -> Path:
    grid = captioned_grid(images, self.prompts)
    self.dir.mkdir(parents=True, exist_ok=True)
    path, png = self.dir / grid_name(step), io.BytesIO()
    grid.save(png, format="PNG")
    # A kill mid-write leaves no grid that looks made.
    output_files.write_atomically(path, png.getvalue())
    if writer is not None:
      writer.add_image("samples", np.asarray(grid), step, dataformats="HWC")
    return path
