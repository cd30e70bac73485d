"""Helpers shared by the GAN module tests."""
import jax
import numpy as np


def fast_key(seed: int) -> jax.Array:
  # RBG keys: init graphs compile ~2-3x faster than threefry on XLA:CPU (no global config change).
  return jax.random.key(seed, impl="unsafe_rbg")


def _random_params(module, *args, seed=5):
  params = module.init(jax.random.key(0), *args)["params"]
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(treedef, [rng.normal(0.0, 0.5, x.shape).astype(np.float32)
                                      for x in leaves])
