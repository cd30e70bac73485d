"""Images for a list of captions from a generator's params, one fresh noise vector per image."""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from llmimg_jax.gan.common import image_noise
from llmimg_jax.text.tokenizer import TextTokenizer
from llmimg_jax.train.state import Models
from llmimg_jax.train.step import generate_checked_images


@functools.lru_cache(maxsize=8)
def _jitted(models: Models):
  return jax.jit(functools.partial(generate_checked_images, models))


def generate_for_captions(models: Models, g_params: Any, text_params: Any, tokenizer: TextTokenizer,
                          captions: Sequence[str], seed: int = 0, batch_size: int = 64,
                          check_finite: bool = False) -> np.ndarray:
  """uint8 [len(captions), R, R, 3]; image i uses z = normal(fold_in(key(seed), i)), so the noise
  does not depend on batch_size (the images up to a uint8 step of XLA's rounding). Params may be
  sharded or replicated; batches are not sharded. With `check_finite` (evaluate.py), a ValueError
  if the generator's output held NaN or inf (which uint8 stores as flat colour), as sample.py's."""
  fn = _jitted(models)
  z_dim = models.config.model.z_dim
  key = jax.random.PRNGKey(seed)
  tokens = tokenizer(list(captions))
  out, finite = [], []
  for start in range(0, len(captions), batch_size):
    idx = np.arange(start, start + batch_size) % len(captions)  # one shape: the last wraps
    z = image_noise(key, idx, z_dim)  # [batch, z_dim]
    images, ok = jax.device_get(fn(g_params, text_params, z, tokens["input_ids"][idx],
                                   tokens["attention_mask"][idx]))
    out.append(np.asarray(images)[:len(captions) - start])
    finite.append(np.asarray(ok)[:len(captions) - start])
  bad = np.flatnonzero(~np.concatenate(finite))
  if check_finite and len(bad):
    raise ValueError(
        f"{len(bad)} of {len(captions)} generated images are not finite (NaN or inf in the "
        "generator's output, which would be scored as flat colour), the first for caption "
        f"{captions[bad[0]]!r}: the checkpoint's EMA generator or text encoder may hold NaN or "
        "inf; evaluate an earlier --step.")
  return np.concatenate(out)
