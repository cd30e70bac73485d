"""The plain forms that benchmarks/step_options.py swaps into the step ('@module.name' values)
compute the same function as ours, so an A/B of them times the same step."""
import jax
import numpy as np
import pytest

from benchmarks.profile_step import switch_value
from benchmarks.upsample_conv import plain_upsample_conv3x3
from llmimg_jax.gan import discriminator
from llmimg_jax.gan.generator import upsample_conv3x3


def test_plain_upsample_conv_equals_ours_with_gradients():
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 4))  # odd height: phases at the border
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 4, 3)) / 6
  g = jax.random.normal(jax.random.key(2), (2, 10, 12, 3))
  ref, ref_vjp = jax.vjp(upsample_conv3x3, x, kernel)
  out, vjp = jax.vjp(plain_upsample_conv3x3, x, kernel)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  for got, want in zip(vjp(g), ref_vjp(g)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_switch_values():
  assert (switch_value("@llmimg_jax.gan.discriminator._conv4x4_stride2_direct")
          is discriminator._conv4x4_stride2_direct)
  assert switch_value("False") is False and switch_value("none") == "none"
  with pytest.raises(AttributeError, match="no_such_conv"):
    switch_value("@llmimg_jax.gan.discriminator.no_such_conv")
