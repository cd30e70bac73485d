"""Bias, per-channel affine and conv layers whose gradient reductions are matmuls, and 3x3 convs
with few channels on one side in forms XLA:CPU runs faster (`conv3x3`, further down).

Autodiff turns `x + bias` and `x * gamma + beta` into reductions over the batch and pixels in
the backward pass. XLA:CPU emits those as reduce-window trees (and re-runs the producing
elementwise chain inside each reduction), among the largest ops of the train step's profile. These
ops compute the same values with backward rules that take those sums as matmuls with a vector of
ones; the rules are differentiable again (MA-GP differentiates the discriminator twice). On CPU
the GAN step is 6-8% faster (benchmarks/RESULTS.md); other backends keep autodiff's reductions,
which sum in float32 for bf16 compute too (`_broadcast_like`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from llmimg_jax.gan.common import Dtype


def conv2d(x: jax.Array, kernel: jax.Array, padding: str | Sequence[tuple[int, int]] = "SAME",
           strides: tuple[int, int] = (1, 1)) -> jax.Array:
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


def _broadcast_like(v: jax.Array, x: jax.Array) -> jax.Array:
  """v broadcast to x's shape in float32, then cast to x's dtype: v's values, but autodiff sums
  v's gradient over the broadcast axes in float32. (Broadcast in bf16, XLA:CPU summed it in bf16:
  a bias gradient over a batch of 32x32 bf16 maps came out 30-80% off.)"""
  return jnp.broadcast_to(v.astype(jnp.float32), x.shape).astype(x.dtype)


def times_gain(x: jax.Array, gain: jax.Array) -> jax.Array:
  """gain (a float32 scalar parameter, e.g. a residual gain) * x, in x's dtype.

  The gain is broadcast to x's shape before it is cast, so autodiff sums its gradient (over every
  element of x) in float32. Cast first, the sum ran in x's dtype: with bf16 compute, XLA:CPU's
  bf16 sum put a block's gain gradient 60-80% off. The same values as gain.astype(x.dtype) * x.
  """
  return _broadcast_like(gain, x) * x


# None: matmul reductions on XLA:CPU only, where they were measured to pay off; True / False
# force them on / off (benchmarks/step_options.py times both).
MATMUL_REDUCTIONS: bool | None = None


def _use_matmul_reductions() -> bool:
  if MATMUL_REDUCTIONS is None:
    return jax.default_backend() == "cpu"
  return MATMUL_REDUCTIONS


def add_bias(x: jax.Array, bias: jax.Array) -> jax.Array:
  """x [..., c] + bias [c]."""
  return _add_bias(x, bias) if _use_matmul_reductions() else x + _broadcast_like(bias, x)


def _scale_shift_plain(x, gamma, beta):
  return (x * _broadcast_like(gamma[:, None, None, :], x)
          + _broadcast_like(beta[:, None, None, :], x))


def scale_shift(x: jax.Array, gamma: jax.Array, beta: jax.Array) -> jax.Array:
  """x [batch, h, w, c] * gamma [batch, c] + beta [batch, c] (per example and channel)."""
  if _use_matmul_reductions():
    return _scale_shift(x, gamma, beta)
  return _scale_shift_plain(x, gamma, beta)


def _add_bias_plain(x, bias):
  return x + jax.lax.broadcast_to_rank(bias, x.ndim)  # no rank promotion (a flag can forbid it)


_add_bias = jax.custom_vjp(_add_bias_plain)


def _add_bias_fwd(x, bias):
  return _add_bias_plain(x, bias), None


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


# 3x3 convs with a few channels on one side (G's to_rgb: 32 -> 3; the input gradient of D's
# conv_img: 32 -> 3) run on XLA:CPU at ~30 GFLOP/s, a seventh of the wide convs' rate (one-core
# profile in benchmarks/RESULTS.md). None: the forms below on CPU only; True / False force them.
NARROW_CONVS: bool | None = None
_NARROW = 4  # at most this many channels on the narrow side


def _use_narrow_convs() -> bool:
  return jax.default_backend() == "cpu" if NARROW_CONVS is None else NARROW_CONVS


def _conv3x3_taps_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """3x3 SAME conv as one matmul onto all nine taps' outputs, then nine shifted adds."""
  b, h, w, c = x.shape
  out = kernel.shape[-1]
  z = jnp.matmul(x, kernel.transpose(2, 0, 1, 3).reshape(c, 9 * out),
                 preferred_element_type=jnp.float32)  # [b, h, w, (dy, dx, out)]
  z = jnp.pad(z.reshape(b, h, w, 3, 3, out), ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0), (0, 0)))
  # y[i, j] = sum over taps of x[i + dy - 1, j + dx - 1] @ kernel[dy, dx] = z_padded[i + dy, j + dx]
  # (summed in fp32 and rounded once, as a conv accumulates, when the compute dtype is bf16)
  y = sum(z[:, dy:dy + h, dx:dx + w, dy, dx] for dy in range(3) for dx in range(3))
  return y.astype(x.dtype)


def _conv3x3_kernel_grad(x: jax.Array, g: jax.Array) -> jax.Array:
  """The 3x3 SAME conv's kernel gradient for output gradient g with few channels: one matmul of x
  with g's nine shifted copies. -> [3, 3, in, out]"""
  b, h, w, c = x.shape
  out = g.shape[-1]
  gp = jnp.pad(g, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # dk[dy, dx] = sum over (p, q) of x[p, q] g[p - dy + 1, q - dx + 1] = x[p, q] gp[p - dy + 2, ...]
  shifted = jnp.concatenate([gp[:, 2 - dy:2 - dy + h, 2 - dx:2 - dx + w]
                             for dy in range(3) for dx in range(3)], axis=-1)  # [b, h, w, 9 out]
  dk = jax.lax.dot_general(shifted.reshape(-1, 9 * out), x.reshape(-1, c),
                           (((0,), (0,)), ((), ())))  # [(dy, dx, out), in]
  return dk.reshape(3, 3, out, c).transpose(0, 1, 3, 2)


def _transposed_kernel(kernel: jax.Array) -> jax.Array:
  """The kernel whose SAME conv is the input gradient of kernel's: flipped, in <-> out."""
  return kernel[::-1, ::-1].transpose(0, 1, 3, 2)


@jax.custom_vjp
def conv3x3_narrow_out(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """conv2d(x, kernel) for a [3, 3, in, out] kernel with few outputs: the forward as
  `_conv3x3_taps_matmul`, the kernel gradient as `_conv3x3_kernel_grad`, the input gradient as
  XLA's conv (a conv with few inputs). The backward rule is plain JAX, differentiable again."""
  return _conv3x3_taps_matmul(x, kernel)


def _narrow_out_fwd(x, kernel):
  return _conv3x3_taps_matmul(x, kernel), (x, kernel)


def _narrow_out_bwd(residuals, g):
  x, kernel = residuals
  return conv2d(g, _transposed_kernel(kernel)), _conv3x3_kernel_grad(x, g)


conv3x3_narrow_out.defvjp(_narrow_out_fwd, _narrow_out_bwd)


@jax.custom_vjp
def conv3x3_narrow_in(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """conv2d(x, kernel) for a [3, 3, in, out] kernel with few inputs: XLA's conv forward and
  kernel gradient; the input gradient (a conv with few outputs) through `conv3x3_narrow_out`,
  whose own rule serves MA-GP's second derivative."""
  return conv2d(x, kernel)


def _narrow_in_fwd(x, kernel):
  return conv2d(x, kernel), (x, kernel)


def _narrow_in_bwd(residuals, g):
  x, kernel = residuals
  dkernel = jax.vjp(lambda k_: conv2d(x, k_), kernel)[1](g)[0]
  return conv3x3_narrow_out(g, _transposed_kernel(kernel)), dkernel


conv3x3_narrow_in.defvjp(_narrow_in_fwd, _narrow_in_bwd)


def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """3x3 SAME conv2d, through the narrow-channel forms where one side has <= 4 channels."""
  if _use_narrow_convs():
    if kernel.shape[3] <= _NARROW:
      return conv3x3_narrow_out(x, kernel)
    if kernel.shape[2] <= _NARROW:
      return conv3x3_narrow_in(x, kernel)
  return conv2d(x, kernel)


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
                        (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
    conv = conv3x3 if tuple(self.kernel_size) == (3, 3) else conv2d
    y = conv(x.astype(self.dtype), kernel.astype(self.dtype))  # [batch, h, w, features]
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
      y = add_bias(y, bias.astype(self.dtype))
    return y


class Dense(nn.Module):
  """nn.Dense(features) on the last axis: the same parameters (`kernel` [in, out], lecun-normal
  by default; `bias` [out], zeros) and function, bias through `add_bias` (its gradient, a sum
  over every other axis, in float32 for bf16 compute too), as Conv's. G's and D's dense layers."""
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                            (((x.ndim - 1,), (0,)), ((), ())))  # [..., features]
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
      y = add_bias(y, bias.astype(self.dtype))
    return y
