"""Batched, jitted text-to-image sampling from a trained run's EMA generator.

  sampler = Sampler.from_workdir("runs/quick")            # latest checkpoint; step=K for another
  images = sampler(["a red circle"], seed=0, num_per_prompt=4, truncation=0.88)  # [4, R, R, 3]

Noise. Image j of every prompt uses z_j = normal(fold_in(key(seed), j)): one noise vector per
grid column, shared by all prompts of a call. So a seed gives the same noise, and the same images,
whatever the batch size, device count, jax_default_prng_impl (the key is threefry2x32's:
prng.noise_key), or the other prompts in the call (up to a uint8 step where XLA's float rounding
differs between batch shapes), and a grid's columns compare prompts under the same noise.

Batches. A call's images are generated in equal batches of n_dev * 2**k or n_dev * 3 * 2**k rows
(n_dev: the mesh's devices), the smallest that holds them in as few calls as batch_size allows
(expand.batch_bucket); padding rows repeat earlier images and are cut off. So calls of any size
share a few compiled programs (one per bucket, with truncation or without: its value is an
argument), not one per image count.

Truncation (DF-GAN's truncation trick): with `truncation=t`, each z entry is t times a draw from
the standard normal truncated to [-2, 2] (`jax.random.truncated_normal`; DF-GAN's
`truncated_noise`: `t * truncnorm.rvs(-2, 2)`), so 0.88, DF-GAN's sampling value, means the same
here. Smaller t trades diversity for fidelity; None (default) draws from the full normal.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from llmimg_jax.prng import noise_key
from llmimg_jax.sample.checks import check_integer, check_prompts, check_sample_args
from llmimg_jax.sample.expand import CaptionExpander, batch_bucket
from llmimg_jax.sample.restore import full_workdir, readable_run, restore_for_sampling
from llmimg_jax.text import T5Config
from llmimg_jax.text.generator import check_seed
from llmimg_jax.text.loading import resolve_checkpoint_dir
from llmimg_jax.text.tokenizer import TextTokenizer
from llmimg_jax.train.mesh import compiler_options, make_mesh, rows_per_call
from llmimg_jax.train.state import (TEXT_DIR, Models, build_models, build_text,
                                    load_text_files)
from llmimg_jax.train.step import generate_numbered_images

log = logging.getLogger(__name__)
Expander = Callable[[Sequence[str]], list[str]]


@dataclasses.dataclass
class SampleResult:
  images: np.ndarray  # uint8 [len(prompts) * num_per_prompt, R, R, 3], prompt-major
  prompts: list[str]
  captions: list[str]  # what conditioned the generator: expanded captions, or the prompts
  expanded: bool
  seed: int
  num_per_prompt: int
  truncation: float | None
  step: int | None
  seconds: float  # generation time, compilation excluded
  compile_seconds: float

  @property
  def images_per_sec(self) -> float:
    return len(self.images) / max(self.seconds, 1e-9)


def text_setup(config: ml_collections.ConfigDict, workdir: str | os.PathLike | None = None
               ) -> tuple[TextTokenizer, T5Config]:
  """The run's tokenizer and encoder config, without loading pretrained weights (the checkpoint
  holds the encoder params actually trained or frozen). A pretrained text.checkpoint's files are
  read from WORKDIR/text (written by training), else from the checkpoint directory or hub."""
  t = config.text
  if t.checkpoint:
    saved = full_workdir(workdir) / TEXT_DIR if workdir is not None else None  # as errors name it
    if saved is not None and (saved / "config.json").is_file():
      text_dir = str(saved)
    else:  # a run trained before WORKDIR/text existed
      text_dir = _checkpoint_dir_of_run(t.checkpoint, saved)
    return load_text_files(text_dir, t.max_length)
  tokenizer, t5_config, _ = build_text(config)
  return tokenizer, t5_config


def _checkpoint_dir_of_run(checkpoint: str, saved: Path | None) -> str:
  """The run's config.text.checkpoint as a local directory; an error naming `saved` (the
  WORKDIR/text that lacks its files) as the fix: sample.py has no flag for the T5."""
  try:
    return resolve_checkpoint_dir(checkpoint)
  except OSError as e:
    if saved is None:
      raise
    # A local path that is gone: no more to say; a hub name's download: why it failed.
    cause = e.__cause__ or e
    reason = ("not found" if type(e) is FileNotFoundError and e.__cause__ is None
              else f"{type(cause).__name__}: {' '.join(str(cause).split())}")
    raise FileNotFoundError(
        f"The run's tokenizer and T5 config.json are neither in {saved} nor in its "
        f"config.text.checkpoint ({checkpoint!r}: {reason}): copy that T5's config.json and "
        f"tokenizer files into {saved}/ (the trained weights are in the run's checkpoints).") from e


def _check_captions(captions: list[Any], num_prompts: int) -> None:
  """A custom expander's captions: one str per prompt (too few would fail with an IndexError deep
  in sample(), too many be dropped without a word)."""
  bad = next((i for i, c in enumerate(captions) if not isinstance(c, str)), None)
  if len(captions) != num_prompts or bad is not None:
    what = (f"returned {len(captions)} caption(s) for {num_prompts} prompts" if bad is None else
            f"caption {bad} is {captions[bad]!r}, not a str")
    raise ValueError(f"The caption expander {what}: it must return one caption (str) per prompt, "
                     "in order.")


class Sampler:
  """Images from prompts with a trained run's EMA generator; see the module docstring."""

  def __init__(self, models: Models, tokenizer: TextTokenizer, ema_params: Any,
               text_params: Any, *, mesh: jax.sharding.Mesh, step: int | None = None,
               batch_size: int = 64, expander: Expander | None = None):
    check_integer(batch_size, "Sampler batch_size")
    if batch_size < 1:
      raise ValueError(f"Sampler batch_size={batch_size} must be >= 1 (images per call of the "
                       "generator, rounded up to a multiple of the device count).")
    self.models, self.tokenizer, self.mesh, self.step = models, tokenizer, mesh, step
    self.config = models.config
    self.expander = expander
    n = mesh.devices.size
    self.batch_size = rows_per_call(batch_size, n)
    self._replicated, self._batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    # On the mesh's devices once, as the compiled sampler takes them: params of another sampler's
    # mesh or of one device failed every call with XLA's 'input shardings that disagree'.
    self.ema_params, self.text_params = jax.device_put((ema_params, text_params),
                                                       self._replicated)
    self._compiled: dict[tuple, Any] = {}

  @classmethod
  def from_workdir(cls, workdir: str | os.PathLike, step: int | None = None, *,
                   batch_size: int = 64, expander: Expander | None = None,
                   devices: Sequence[jax.Device] | None = None) -> Sampler:
    """Restores step `step` (default: latest) of a train.py workdir onto `devices` (default: this
    process's devices; batches are split across them)."""
    devices = list(jax.local_devices() if devices is None else devices)
    mesh = make_mesh(devices)
    with readable_run(workdir):
      restored = restore_for_sampling(workdir, step, NamedSharding(mesh, P()))
      tokenizer, t5_config = text_setup(restored.config, workdir)
    models = build_models(restored.config, t5_config)
    return cls(models, tokenizer, restored.ema_params, restored.text_params, mesh=mesh,
               step=restored.step, batch_size=batch_size, expander=expander)

  @property
  def resolution(self) -> int:
    return int(self.config.model.resolution)

  def __call__(self, prompts: Sequence[str] | str, seed: int = 0, num_per_prompt: int = 1,
               truncation: float | None = None) -> np.ndarray:
    """uint8 [len(prompts) * num_per_prompt, R, R, 3]: images of prompt i at [i * n : (i+1) * n]."""
    return self.sample(prompts, seed, num_per_prompt, truncation).images

  def _executable(self, batch: int, truncated: bool):
    """The compiled generation of `batch` images; the truncation value is its last argument (a
    float32 scalar), so a sweep over truncations reuses one program."""
    key = (batch, truncated)
    if key not in self._compiled:
      fn = jax.jit(functools.partial(generate_numbered_images, self.models),
                   in_shardings=(self._replicated,) * 3 + (self._batch,) * 3 + (self._replicated,),
                   out_shardings=(self._batch, self._batch),
                   compiler_options=compiler_options(self.mesh))
      length = self.tokenizer.max_length
      args = (self.ema_params, self.text_params, noise_key(0),
              jax.ShapeDtypeStruct((batch,), jnp.int32),
              jax.ShapeDtypeStruct((batch, length), jnp.int32),
              jax.ShapeDtypeStruct((batch, length), jnp.int32),
              jax.ShapeDtypeStruct((), jnp.float32) if truncated else None)
      self._compiled[key] = fn.lower(*args).compile()
    return self._compiled[key]

  def sample(self, prompts: Sequence[str] | str, seed: int = 0, num_per_prompt: int = 1,
             truncation: float | None = None) -> SampleResult:
    """Like __call__, with the captions used, timing and settings (for files and logs)."""
    prompts = check_prompts(prompts)
    seed = check_seed(seed)  # an int (JSON for samples.jsonl); a PRNG key is named as one
    truncation = check_sample_args(num_per_prompt, seed, truncation)
    num_per_prompt = int(num_per_prompt)  # a Python int: numpy's pass the check but are no JSON
    expanded = self.expander is not None
    captions = list(self.expander(prompts)) if expanded else list(prompts)
    if expanded:
      _check_captions(captions, len(prompts))
    # [prompts, L]; over-long captions truncated, with a warning: a longer max_length would be
    # another input than the run's text encoder was trained on. A caller's own expander has no
    # max_new_tokens (nor a flag of sample.py's).
    shorten = "such prompts" if not expanded else "the expander's captions"
    tokens = self.tokenizer(captions, fix=(
        f"the run's text encoder was trained on config.text.max_length="
        f"{self.config.text.max_length} tokens and reads no more: shorten {shorten} to keep them "
        "whole" + (" (fewer max_new_tokens: sample.py --expand_max_new_tokens)"
                   if isinstance(self.expander, CaptionExpander) else "")))
    total = len(prompts) * num_per_prompt
    rows = np.repeat(np.arange(len(prompts)), num_per_prompt)  # [total] prompt of each image
    columns = np.tile(np.arange(num_per_prompt, dtype=np.int32), len(prompts))  # [total]
    n_dev = self.mesh.devices.size
    batch = batch_bucket(total, self.batch_size, n_dev)  # n_dev * (1, 2, 3, 4, 6, ...)
    t0 = time.perf_counter()
    compiled = self._executable(batch, truncation is not None)
    compile_seconds = time.perf_counter() - t0
    key = jax.device_put(noise_key(seed), self._replicated)
    t = None if truncation is None else jax.device_put(np.float32(truncation), self._replicated)
    outputs = []
    t0 = time.perf_counter()
    for start in range(0, total, batch):
      idx = np.arange(start, start + batch) % total  # the last batch wraps around: one shape
      ids, mask = tokens["input_ids"][rows[idx]], tokens["attention_mask"][rows[idx]]
      args = [jax.device_put(x, self._batch) for x in (columns[idx], ids, mask)]
      outputs.append(compiled(self.ema_params, self.text_params, key, *args, t))
    images, finite = (np.concatenate(x)[:total] for x in zip(*jax.device_get(outputs)))
    seconds = time.perf_counter() - t0
    if not finite.all():
      self._refuse_non_finite(np.flatnonzero(~finite), prompts, num_per_prompt, truncation)
    log.info("Sampled %d images at %dx%d in %.2fs: %.1f images/s (compilation %.1fs).", total,
             self.resolution, self.resolution, seconds, total / max(seconds, 1e-9),
             compile_seconds)
    return SampleResult(images, prompts, captions, expanded, seed, num_per_prompt, truncation,
                        self.step, seconds, compile_seconds)

  def _refuse_non_finite(self, bad: np.ndarray, prompts: list[str], num_per_prompt: int,
                         truncation: float | None) -> None:
    """A ValueError for images whose generator output held NaN or inf (stored as flat colour)."""
    first = int(bad[0])
    hint = (f"truncation={truncation} multiplies the noise: use a smaller one (DF-GAN samples at "
            "0.88). Otherwise check" if truncation is not None else "Check")
    raise ValueError(
        f"{len(bad)} of {len(prompts) * num_per_prompt} generated images are not finite (NaN or "
        "inf in the generator's output, which would be saved as flat colour), the first: image "
        f"{first % num_per_prompt} of prompt {prompts[first // num_per_prompt]!r}. {hint} the "
        f"run's checkpoint{'' if self.step is None else f' (step {self.step})'}: its EMA "
        "generator or text encoder may hold NaN or inf; sample an earlier step.")
