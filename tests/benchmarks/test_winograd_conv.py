"""benchmarks/winograd_conv.py times a correct Winograd convolution: the same values and gradients
as XLA's 3x3 SAME conv."""
import jax
import numpy as np
import pytest

from benchmarks.winograd_conv import F23, F43, winograd_conv3x3
from llmimg_jax.gan.layers import conv2d


@pytest.mark.parametrize("f", [F23, F43], ids=["F(2,3)", "F(4,3)"])
def test_winograd_equals_conv_with_gradients(f):
  # 7 x 10 pixels: a partial last tile on both axes (cropped off the output).
  x = jax.random.normal(jax.random.key(0), (2, 7, 10, 5))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 5, 6)) / 7
  g = jax.random.normal(jax.random.key(2), (2, 7, 10, 6))
  ref, ref_vjp = jax.vjp(conv2d, x, kernel)
  out, vjp = jax.vjp(lambda x_, k_: winograd_conv3x3(x_, k_, f), x, kernel)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  for got, want in zip(vjp(g), ref_vjp(g)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
