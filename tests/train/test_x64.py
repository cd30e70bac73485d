"""Under jax_enable_x64, which some users set for a whole process: the run without it."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from llmimg_jax import gan
from llmimg_jax.gan.common import image_noise
from llmimg_jax.train.state import build_models, build_text, init_state
from llmimg_jax.train.step import train_step
from tests.train.utils import _batch, tiny_config


def _float64_ops(jaxpr: jax_core.Jaxpr) -> list[str]:
  """The primitives of `jaxpr` (and the jaxprs inside it) with a float64 output (not weakly typed:
  Python numbers)."""
  found = []
  for eqn in jaxpr.eqns:
    if any(getattr(v.aval, "dtype", None) == jnp.float64 and not v.aval.weak_type
           for v in eqn.outvars):
      found.append(str(eqn.primitive))
    for param in eqn.params.values():
      for inner in param if isinstance(param, (list, tuple)) else [param]:
        if isinstance(inner, (jax_core.ClosedJaxpr, jax_core.Jaxpr)):
          found += _float64_ops(getattr(inner, "jaxpr", inner))
  return found


def test_parameters_and_random_draws_are_the_same_under_x64(tmp_path):
  """Parameters were float64 (361 of 467 leaves, saved so) and initialised otherwise, and the
  noise and DiffAugment's draws were other ones: training, sample.py's images and evaluate.py's
  numbers differed from the same seed's without x64."""
  cfg = tiny_config(tmp_path)
  tokenizer, t5_config, _ = build_text(cfg)
  models = build_models(cfg, t5_config)
  init = jax.jit(functools.partial(init_state, models))
  key, images = jax.random.PRNGKey(3), jnp.linspace(-1, 1, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3)

  def run():
    return (init(key, None), image_noise(key, jnp.arange(4), 16),
            image_noise(key, jnp.arange(4), 16, 0.7), gan.diff_augment(images, key))

  without = jax.device_get(run())
  with jax.enable_x64(True):
    under_x64 = jax.device_get(run())
    step = jax.make_jaxpr(functools.partial(train_step, models), return_shape=True)
    step_jaxpr, (step_state, _) = step(without[0], _batch(cfg, tokenizer))
  # No float64 in the step (its noise was) but Adam's bias corrections (optax: 1 - b ** count).
  assert set(_float64_ops(step_jaxpr.jaxpr)) == {"pow", "sub"}
  assert jax.tree.structure(under_x64) == jax.tree.structure(without)
  for a, b in zip(jax.tree.leaves(under_x64), jax.tree.leaves(without)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  assert ({jax.tree_util.keystr(p): x.dtype for p, x in
           jax.tree_util.tree_leaves_with_path(step_state)} ==
          {jax.tree_util.keystr(p): x.dtype for p, x in
           jax.tree_util.tree_leaves_with_path(without[0])})
