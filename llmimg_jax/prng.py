"""What the JAX PRNG of a key changes here: vmap's draws, and the shape of its raw key data; the
PRNG of the images' noise."""
from __future__ import annotations

import functools

import jax

# The PRNG of the images' noise in sampling, evaluation and the training's sample grids, whatever
# jax_default_prng_impl is (JAX's default: images under it are unchanged), so that a seed gives
# the same images under any. The train step's key stays the default's (checkpoints record it).
NOISE_IMPL = "threefry2x32"

# The PRNGs jax_default_prng_impl names (JAX 0.10), JAX's default first.
_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg", "threefry4x32", "philox2x32", "philox4x32")


def noise_key(seed: int) -> jax.Array:
  """The typed key the images' noise of `seed` is drawn from (NOISE_IMPL's)."""
  return jax.random.key(seed, impl=NOISE_IMPL)


def impl_name(key: jax.Array) -> str:
  """The PRNG of `key`: a typed key's own; raw key data's is jax_default_prng_impl."""
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    return str(jax.random.key_impl(key))
  return jax.config.jax_default_prng_impl


def vmap_draws_from_first_key(key: jax.Array) -> bool:
  """Whether vmap over keys of `key`'s PRNG draws the whole batch from the first key: rbg and
  unsafe_rbg (rng_bit_generator's batching rule). Draw row by row there."""
  return impl_name(key) in ("rbg", "unsafe_rbg")


@functools.cache
def raw_key_length(impl: str) -> int:
  """The length of jax.random.PRNGKey's raw key data (uint32) under the PRNG `impl` (traced, not
  run; key_data, as PRNGKey is a typed key under jax_enable_custom_prng)."""
  return jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0, impl=impl))).shape[-1]


def impls_with_key_length(length: int) -> list[str]:
  """The PRNGs of this JAX whose raw key data has `length` words, e.g. 4: rbg, unsafe_rbg, ..."""
  names = []
  for name in _IMPLS:
    try:
      if raw_key_length(name) == length:
        names.append(name)
    except ValueError:  # a PRNG this JAX lacks
      continue
  return names
