"""Shared helpers for the GAN: channel schedules, activations, text pooling, input noise."""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from llmimg_jax import prng

Dtype = Any

SUPPORTED_RESOLUTIONS: tuple[int, ...] = (32, 64, 128, 256)


def check_resolution(resolution: int) -> int:
  if resolution not in SUPPORTED_RESOLUTIONS:
    allowed = ", ".join(str(r) for r in SUPPORTED_RESOLUTIONS)
    raise ValueError(f"Unsupported resolution {resolution!r}; allowed resolutions: {allowed}.")
  return resolution


def channel_multipliers(resolution: int) -> list[int]:
  """DF-GAN's schedule from the highest resolution down to 4x4, e.g. 256 -> [1,2,4,8,8,8,8].

  The discriminator walks it forward (R -> 4x4), the generator backwards (4x4 -> R).
  """
  check_resolution(resolution)
  num = int(math.log2(resolution)) - 1
  return [min(2**i, 8) for i in range(num)]


def lrelu(x: jax.Array) -> jax.Array:
  return jax.nn.leaky_relu(x, negative_slope=0.2)


def upsample2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x upsampling of [batch, height, width, channels]."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)  # [batch, 2*height, 2*width, channels]


def avgpool2x(x: jax.Array) -> jax.Array:
  """2x2 average pooling with stride 2 of [batch, height, width, channels]."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def sentence_embedding(token_states: jax.Array, mask: jax.Array) -> jax.Array:
  """Mask-aware mean of encoder states: [batch, length, dim], [batch, length] -> [batch, dim].

  Computed in float32; an all-zero mask row gives a zero vector (no NaN).
  """
  states = token_states.astype(jnp.float32)
  m = mask.astype(jnp.float32)[..., None]  # [batch, length, 1]
  total = jnp.sum(jnp.where(m > 0, states, 0.0), axis=1)  # [batch, dim]
  count = jnp.maximum(jnp.sum(m, axis=1), 1.0)  # [batch, 1]
  return total / count


def image_noise(key: jax.Array, indices: jax.Array, z_dim: int,
                truncation: float | jax.Array | None = None) -> jax.Array:
  """z [b, z_dim] of the images numbered `indices` [b]: normal(fold_in(key, i)), so an image's
  noise does not depend on the batch it is drawn in; with `truncation` t, t times a normal
  truncated to [-2, 2] (DF-GAN's truncated_noise)."""
  def one(i):
    k = jax.random.fold_in(key, i)
    if truncation is None:
      return jax.random.normal(k, (z_dim,), jnp.float32)
    return truncation * jax.random.truncated_normal(k, -2.0, 2.0, (z_dim,), jnp.float32)
  if prng.vmap_draws_from_first_key(key):  # rbg, unsafe_rbg
    return jax.lax.map(one, indices)
  return jax.vmap(one)(indices)
