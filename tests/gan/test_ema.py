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
