"""Images for a list of captions from a generator's params, one fresh noise vector per image,
data parallel over a mesh's 'data' axis."""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from llmimg_jax.prng import NOISE_IMPL, noise_key
from llmimg_jax.sample.expand import batch_bucket
from llmimg_jax.text.generator import check_seed
from llmimg_jax.text.tokenizer import TextTokenizer
from llmimg_jax.train.mesh import compiler_options, from_every_host, make_mesh, rows_per_call
from llmimg_jax.train.state import Models
from llmimg_jax.train.step import generate_numbered_images


def _generate(models: Models, g_params: Any, text_params: Any, key_data: jax.Array,
              *args: jax.Array) -> tuple[jax.Array, jax.Array]:
  """generate_numbered_images from the noise key's raw data (uint32 [2], which from_every_host
  places; a typed key it cannot)."""
  key = jax.random.wrap_key_data(key_data, impl=NOISE_IMPL)
  return generate_numbered_images(models, g_params, text_params, key, *args)


@functools.lru_cache(maxsize=8)
def _jitted(models: Models, mesh: jax.sharding.Mesh):
  """Rows split over the devices, params and key replicated; every device (host) gets every
  image, so each host of a multi-host run can score them. In one process too, where the images
  could stay split for device_get to assemble (as the Sampler's): one program for one host or
  several, and the gather is of a uint8 batch (12.6 MB for 64 images at 256px), copied to the
  host while the next batch runs."""
  replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  return jax.jit(functools.partial(_generate, models),
                 in_shardings=(replicated,) * 3 + (rows,) * 3, out_shardings=replicated,
                 compiler_options=compiler_options(mesh))


def generate_for_captions(models: Models, g_params: Any, text_params: Any, tokenizer: TextTokenizer,
                          captions: Sequence[str] | str, seed: int = 0, batch_size: int = 64,
                          check_finite: bool = False, mesh: jax.sharding.Mesh | None = None,
                          warn_cut: bool = True) -> np.ndarray:
  """uint8 [len(captions), R, R, 3]; image i uses z = normal(fold_in(key(seed), i)), so the noise
  does not depend on batch_size, the device count or jax_default_prng_impl (prng.noise_key; the
  images up to a uint8 step of XLA's rounding). With `check_finite` (evaluate.py), a ValueError
  if the generator's output held NaN or inf (which uint8 stores as flat colour), as sample.py's.

  Data parallel over `mesh` (default: every device of every host; in a multi-host run every host
  calls this with the same captions): batches of at most batch_size rows, rounded
  up to a multiple of the device count (Sampler's buckets, expand.batch_bucket; the last batch
  wraps around), split over the devices; the params are replicated on them (copied there once if
  they are not). One str is one caption, as the Sampler and the tokenizer take it. Captions over
  config.text.max_length are cut, with a warning unless not `warn_cut` (a caller's repeat)."""
  # One str: not one caption per character; a NumPy array of str or a pandas Series: no bool()
  captions = [captions] if isinstance(captions, str) else list(captions)
  if not captions:
    raise ValueError("generate_for_captions got no captions; pass at least one.")
  check_seed(seed)  # PRNGKey(2**32) would be seed 0's key; 2.5 would fail as 'got JitTracer'
  mesh = make_mesh() if mesh is None else mesh
  replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  g_params, text_params = jax.device_put((g_params, text_params), replicated)
  fn = _jitted(models, mesh)
  key = from_every_host(np.asarray(jax.random.key_data(noise_key(seed))), replicated)
  tokens = tokenizer(captions, fix=(
      f"the run reads config.text.max_length={models.config.text.max_length} tokens of a caption, "
      "as in training: a run trained with a larger one (train.py --config.text.max_length) keeps "
      "such captions whole")) if warn_cut else tokenizer.tokenize(captions)[0]
  n, n_dev = len(captions), mesh.devices.size
  batch = batch_bucket(n, rows_per_call(batch_size, n_dev), n_dev)
  r = models.config.model.resolution
  images, finite = np.empty((n, r, r, 3), np.uint8), np.empty((n,), bool)  # filled batch by batch

  def fetch(start: int, outputs: tuple[jax.Array, jax.Array]) -> None:
    stop = min(start + batch, n)
    images[start:stop], finite[start:stop] = (x[:stop - start] for x in jax.device_get(outputs))

  in_flight = None
  for start in range(0, n, batch):
    idx = np.arange(start, start + batch) % n  # one shape: the last batch wraps around
    args = (idx.astype(np.int32), tokens["input_ids"][idx], tokens["attention_mask"][idx])
    outputs = fn(g_params, text_params, key, *(from_every_host(x, rows) for x in args))
    # One batch in flight: batch k is copied to the host while batch k+1 runs (not every batch
    # at the end: each holds its images on every device).
    if in_flight is not None:
      fetch(*in_flight)
    in_flight = start, outputs
  fetch(*in_flight)
  bad = np.flatnonzero(~finite)
  if check_finite and len(bad):
    raise ValueError(
        f"{len(bad)} of {len(captions)} generated images are not finite (NaN or inf in the "
        "generator's output, which would be scored as flat colour), the first for caption "
        f"{captions[bad[0]]!r}: the checkpoint's EMA generator or text encoder may hold NaN or "
        "inf; evaluate an earlier --step.")
  return images
