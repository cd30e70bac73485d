import jax
import jax.numpy as jnp
import numpy as np

from llmimg_jax.gan import ema_update


def test_ema_update_numbers():
  ema = {"a": jnp.array([1.0, 2.0]), "b": {"c": jnp.array(10.0)}}
  new = {"a": jnp.array([3.0, 6.0]), "b": {"c": jnp.array(0.0)}}
  out = ema_update(ema, new, 0.9)
  np.testing.assert_allclose(np.asarray(out["a"]), [1.2, 2.4], rtol=1e-6)
  np.testing.assert_allclose(float(out["b"]["c"]), 9.0, rtol=1e-6)
  # Pure: inputs untouched; decay 1 keeps the average, decay 0 copies the params.
  np.testing.assert_array_equal(np.asarray(ema["a"]), [1.0, 2.0])
  np.testing.assert_array_equal(np.asarray(ema_update(ema, new, 1.0)["a"]), [1.0, 2.0])
  np.testing.assert_array_equal(np.asarray(ema_update(ema, new, 0.0)["a"]), [3.0, 6.0])
  # Two steps compound: 0.5 * (0.5 * 1 + 0.5 * 3) + 0.5 * 3 = 2.5
  twice = ema_update(ema_update(ema, new, 0.5), new, 0.5)
  np.testing.assert_allclose(float(twice["a"][0]), 2.5)
  assert out["a"].dtype == jnp.float32


def test_ema_update_keeps_each_leaf_s_dtype():
  """A float32 decay (the train step's) over bfloat16 leaves promoted them to float32: the
  state's dtypes changed, which lax.cond's branches in the train step must agree on."""
  ema = {"a": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(3, jnp.float32)}
  out = ema_update(ema, jax.tree.map(jnp.zeros_like, ema), jnp.float32(0.5))
  assert (out["a"].dtype, out["b"].dtype) == (jnp.bfloat16, jnp.float32)
  np.testing.assert_array_equal(np.asarray(out["a"], np.float32), [0.5] * 3)
