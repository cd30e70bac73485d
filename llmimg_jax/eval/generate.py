"""Images for a list of captions from a generator's params, one fresh noise vector per image."""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np

from llmimg_jax.gan.common import image_noise
from llmimg_jax.train.state import Models
from llmimg_jax.train.step import generate_images


@functools.lru_cache(maxsize=8)
def _jitted(models: Models):
  return jax.jit(functools.partial(generate_images, models))


def generate_for_captions(models: Models, g_params, text_params, tokenizer,
                          captions: Sequence[str], seed: int = 0, batch_size: int = 64
                          ) -> np.ndarray:
  """uint8 [len(captions), R, R, 3]; image i uses z = normal(fold_in(key(seed), i)), so the noise
  does not depend on batch_size (the images up to a uint8 step of XLA's rounding). Params may be
  sharded or replicated; batches are not sharded."""
  fn = _jitted(models)
  z_dim = models.config.model.z_dim
  key = jax.random.PRNGKey(seed)
  tokens = tokenizer(list(captions))
  out = []
  for start in range(0, len(captions), batch_size):
    idx = np.arange(start, start + batch_size) % len(captions)  # one shape: the last wraps
    z = image_noise(key, idx, z_dim)  # [batch, z_dim]
    images = fn(g_params, text_params, z, tokens["input_ids"][idx], tokens["attention_mask"][idx])
    out.append(np.asarray(jax.device_get(images))[:len(captions) - start])
  return np.concatenate(out)
