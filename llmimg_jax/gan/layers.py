"""Bias, per-channel affine and conv layers whose gradient reductions are matmuls.

Autodiff turns `x + bias` and `x * gamma + beta` into reductions over the batch and pixels in
the backward pass. XLA:CPU emits those as reduce-window trees (and re-runs the producing
elementwise chain inside each reduction), among the largest ops of the train step's profile. These
ops compute the same values with backward rules that take those sums as matmuls with a vector of
ones; the rules are differentiable again (MA-GP differentiates the discriminator twice). On CPU
the GAN step is 6-8% faster (benchmarks/RESULTS.md); other backends keep autodiff's reductions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from llmimg_jax.gan.common import Dtype


def conv2d(x: jax.Array, kernel: jax.Array, padding="SAME", strides=(1, 1)) -> jax.Array:
  """x [batch, h, w, in] (NHWC) convolved with kernel [kh, kw, in, out] (HWIO)."""
  return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def channel_sum(x: jax.Array) -> jax.Array:
  """[..., c] -> [c]: the sum over every axis but the last, as ones [n] @ x [n, c]."""
  flat = x.reshape(-1, x.shape[-1])  # [n, c]
  ones = jnp.ones((flat.shape[0],), x.dtype)
  out = jax.lax.dot_general(ones, flat, (((0,), (0,)), ((), ())),
                            preferred_element_type=jnp.float32)
  return out.astype(x.dtype)


def spatial_sum(x: jax.Array) -> jax.Array:
  """[batch, height, width, c] -> [batch, c], as a batched ones [b, 1, n] @ x [b, n, c]."""
  b, c = x.shape[0], x.shape[-1]
  flat = x.reshape(b, -1, c)  # [b, n, c]
  ones = jnp.ones((b, flat.shape[1]), x.dtype)
  out = jax.lax.dot_general(ones, flat, (((1,), (1,)), ((0,), (0,))),
                            preferred_element_type=jnp.float32)
  return out.astype(x.dtype)


# None: matmul reductions on XLA:CPU only, where they were measured to pay off; True / False
# force them on / off (benchmarks/step_options.py times both).
MATMUL_REDUCTIONS: bool | None = None


def _use_matmul_reductions() -> bool:
  if MATMUL_REDUCTIONS is None:
    return jax.default_backend() == "cpu"
  return MATMUL_REDUCTIONS


def add_bias(x: jax.Array, bias: jax.Array) -> jax.Array:
  """x [..., c] + bias [c]."""
  return _add_bias(x, bias) if _use_matmul_reductions() else x + bias


def _scale_shift_plain(x, gamma, beta):
  return x * gamma[:, None, None, :] + beta[:, None, None, :]


def scale_shift(x: jax.Array, gamma: jax.Array, beta: jax.Array) -> jax.Array:
  """x [batch, h, w, c] * gamma [batch, c] + beta [batch, c] (per example and channel)."""
  if _use_matmul_reductions():
    return _scale_shift(x, gamma, beta)
  return _scale_shift_plain(x, gamma, beta)


@jax.custom_vjp
def _add_bias(x, bias):
  return x + bias


def _add_bias_fwd(x, bias):
  return x + bias, None


def _add_bias_bwd(_, g):
  return g, channel_sum(g)


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


_scale_shift = jax.custom_vjp(_scale_shift_plain)


def _scale_shift_fwd(x, gamma, beta):
  return _scale_shift_plain(x, gamma, beta), (x, gamma)


def _scale_shift_bwd(residuals, g):
  x, gamma = residuals
  return g * gamma[:, None, None, :], spatial_sum(g * x), spatial_sum(g)


_scale_shift.defvjp(_scale_shift_fwd, _scale_shift_bwd)


class Conv(nn.Module):
  """nn.Conv(features, kernel_size) with stride 1 and SAME padding: the same parameters (`kernel`
  [kh, kw, in, out] lecun-normal, `bias` [out] zeros) and function, bias through `add_bias`."""
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (*self.kernel_size, x.shape[-1], self.features))
    y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype))  # [batch, h, w, features]
    if self.use_bias:
      y = add_bias(y, self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype))
    return y
