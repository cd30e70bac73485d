"""DF-GAN-style generator with deep text fusion and word-level cross-attention.

Params are always float32; `dtype` is the compute dtype (e.g. bfloat16). Images come back as
float32 in [-1, 1], [batch, resolution, resolution, 3].
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from llmimg_jax.gan.common import Dtype, channel_multipliers, lrelu, upsample2x
from llmimg_jax.gan.layers import Conv, Dense, add_bias, conv2d, scale_shift, times_gain


def _gamma_beta_bias_init(key, shape, dtype=jnp.float32):
  """Bias of the [gamma, beta] output layer: gamma starts at 1, beta at 0 (as in DF-GAN)."""
  del key
  half = shape[0] // 2
  return jnp.concatenate([jnp.ones((half,), dtype), jnp.zeros((shape[0] - half,), dtype)])


class Affine(nn.Module):
  """Per-channel scale and shift predicted from the condition by a 2-layer MLP.

  The output layer starts at zero weight so gamma=1, beta=0 at init (identity), as in DF-GAN.
  Unlike DF-GAN, whose Affine has two MLPs (fc_gamma, fc_beta), gamma and beta share the hidden
  layer: one [cond, features] matrix fewer per Affine (the PyTorch twin in benchmarks/ mirrors it).
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
    # x: [batch, height, width, channels]; cond: [batch, cond]
    h = nn.relu(Dense(self.features, dtype=self.dtype, name="fc1")(cond))
    gb = Dense(2 * self.features, dtype=self.dtype, kernel_init=nn.initializers.zeros,
               bias_init=_gamma_beta_bias_init, name="fc2")(h)  # [batch, 2*channels]
    gamma, beta = jnp.split(gb, 2, axis=-1)
    return scale_shift(x, gamma, beta)


class DFBlock(nn.Module):
  """DF-GAN fusion block: affine -> lrelu -> affine -> lrelu."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
    x = lrelu(Affine(self.features, self.dtype, name="affine0")(x, cond))
    return lrelu(Affine(self.features, self.dtype, name="affine1")(x, cond))


# Nearest 2x upsampling then a 3x3 conv, per axis: output 2i + r (phase r) reads input rows
# i - 1, i, i + 1 through sums of the kernel's taps k0, k1, k2; as a 2x2 window starting at row
# i + r - 1. -> [window position][phase]
def _taps_2x2(k0: jax.Array, k1: jax.Array, k2: jax.Array) -> list[list[jax.Array]]:
  return [[k0, k0 + k1], [k1 + k2, k2]]


def _phase_kernel(kernel: jax.Array, taps) -> jax.Array:
  """[3, 3, in, out] -> [n, n, in, (r, s, out)] for taps(k0, k1, k2) -> [n offsets][2 phases].
  Slices and adds (as an einsum with a 0/1 tap matrix it ran on XLA:CPU as badly shaped matmuls
  plus transposes, forward and backward)."""
  rows = taps(*kernel)  # [offset y][r] -> [3 (x taps), in, out]
  k = [[taps(*t) for t in phases] for phases in rows]  # [oy][r][ox][s] -> [in, out]
  n = len(rows)
  k = jnp.stack([jnp.stack([jnp.stack([jnp.stack([k[oy][r][ox][s] for s in (0, 1)], axis=1)
                                       for r in (0, 1)], axis=1)
                            for ox in range(n)]) for oy in range(n)])  # [oy, ox, in, r, s, out]
  return k.reshape(*k.shape[:3], -1)


def _compute_phase_kernel(kernel: jax.Array, dtype) -> jax.Array:
  """The 2x2 phase kernel, its tap sums taken in the kernel's dtype (fp32 params) and rounded
  once to the compute dtype."""
  return _phase_kernel(kernel, _taps_2x2).astype(dtype)


def _upsample_conv_2x2_form(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return _phase_conv_2x2(x, _compute_phase_kernel(kernel, x.dtype))


def _phase_conv_2x2(x: jax.Array, phase_kernel: jax.Array) -> jax.Array:
  """The 2x2 form for a phase kernel [2, 2, in, (r, s, out)] already built from the 3x3 one."""
  return _select_phases(_phase_windows(x, phase_kernel))


def _phase_windows(x: jax.Array, phase_kernel: jax.Array) -> jax.Array:
  """Every 2x2 window of x [b, h, w, in] padded by 1 -> [b, h + 1, w + 1, (r, s, out)]."""
  return conv2d(x, phase_kernel, ((1, 1), (1, 1)))


def _phase_windows_valid(x: jax.Array, phase_kernel: jax.Array) -> jax.Array:
  """`_phase_windows` as a VALID conv of x padded explicitly: the same values, and XLA:CPU takes
  this form's kernel gradient on its fast path (the padding conv's runs ~50x slower)."""
  return conv2d(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), phase_kernel, "VALID")


def _select_phases(y: jax.Array) -> jax.Array:
  """The 2x2 conv's windows [b, h + 1, w + 1, (r, s, out)] -> the output [b, 2h, 2w, out]."""
  b, h, w = y.shape[0], y.shape[1] - 1, y.shape[2] - 1
  y = y.reshape(b, h + 1, w + 1, 2, 2, -1)  # [b, h + 1, w + 1, r, s, out]
  # output (2i + r, 2j + s) = window (i + r - 1, j + s - 1) = y[i + r, j + s, r, s]
  y = jnp.stack([jnp.stack([y[:, r:r + h, s:s + w, r, s] for s in (0, 1)], axis=3)
                 for r in (0, 1)], axis=2)  # [b, h, r, w, s, out]
  return y.reshape(b, 2 * h, 2 * w, -1)


@jax.custom_vjp
def upsample_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """conv3x3(upsample2x(x), kernel) with SAME padding: x [b, h, w, in] -> [b, 2h, 2w, out], in
  x's dtype (kernel: fp32 params, or x's dtype).

  As one 2x2 conv with 4x the output channels (each output phase reads a 2x2 window of the
  input: 4/9 of the FLOPs of a 3x3 conv at the input's resolution), then depth-to-space. The
  custom gradient takes the kernel gradient of that conv on an explicitly padded input: XLA:CPU
  runs a padding 2x2 conv's kernel gradient on a path 50x slower (benchmarks/upsample_conv.py).
  """
  return _upsample_conv_2x2_form(x, kernel)


def _upsample_conv3x3_fwd(x, kernel):
  phase_kernel = _compute_phase_kernel(kernel, x.dtype)  # built once, reused for dx
  return _phase_conv_2x2(x, phase_kernel), (x, kernel, phase_kernel)


def _phase_gradient(g: jax.Array) -> jax.Array:
  """g [b, 2h, 2w, out] -> the 2x2 conv's output gradient [b, h + 1, w + 1, (r, s, out)]: phase
  (r, s) of g (a strided slice) at window offset (r, s), zero elsewhere. As concatenated slices:
  autodiff's transpose of the depth-to-space took ~3x as long on XLA:CPU."""
  return jnp.concatenate([jnp.pad(g[:, r::2, s::2], ((0, 0), (r, 1 - r), (s, 1 - s), (0, 0)))
                          for r in (0, 1) for s in (0, 1)], axis=-1)


def _upsample_conv3x3_bwd(residuals, g):
  x, kernel, phase_kernel = residuals
  gy = _phase_gradient(g)  # [b, h + 1, w + 1, 4 * out]
  (dx,) = jax.vjp(lambda x_: _phase_windows(x_, phase_kernel), x)[1](gy)
  (dphase,) = jax.vjp(lambda pk: _phase_windows_valid(x, pk), phase_kernel)[1](gy)
  (dkernel,) = jax.vjp(lambda k_: _compute_phase_kernel(k_, x.dtype), kernel)[1](dphase)
  return dx, dkernel


upsample_conv3x3.defvjp(_upsample_conv3x3_fwd, _upsample_conv3x3_bwd)


class UpsampleConv3x3(nn.Module):
  """nn.Conv(features, (3, 3)) applied to the nearest-2x-upsampled input, computed at the input's
  resolution (`upsample_conv3x3`: per output pixel phase, the kernel taps that phase sees summed,
  then depth-to-space). Same parameters and init as nn.Conv (`kernel` [3, 3, in, out], `bias`
  [out]) and the same function and gradients (tested), but no upsampled tensor.
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (3, 3, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    y = upsample_conv3x3(x.astype(self.dtype), kernel)  # fp32 kernel: see _compute_phase_kernel
    return add_bias(y, bias.astype(self.dtype))  # [b, 2h, 2w, features]


class UpBlock(nn.Module):
  """2x nearest upsample, then residual (DFBlock -> conv3x3 -> DFBlock -> conv3x3) * gain.

  The gain is learned and starts at 1 (DF-GAN's G_Block adds the branch unscaled).
  The shortcut is identity, or a learned 1x1 conv when the channel count changes. Both it and
  the first DFBlock (per-channel scale, shift and leaky ReLU) commute with nearest upsampling, so
  they run before the upsample: the same function at a quarter of the cost. The first conv reads
  the low-resolution tensor directly (UpsampleConv3x3).
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
    in_features = x.shape[-1]
    shortcut = x
    if in_features != self.features:
      shortcut = Conv(self.features, (1, 1), dtype=self.dtype, name="shortcut")(x)
    shortcut = upsample2x(shortcut)  # [batch, 2*height, 2*width, features]
    h = DFBlock(in_features, self.dtype, name="fuse0")(x, cond)
    # = nn.Conv(features, (3, 3))(upsample2x(h)): [batch, 2*height, 2*width, features]
    h = UpsampleConv3x3(self.features, self.dtype, name="conv0")(h)
    h = DFBlock(self.features, self.dtype, name="fuse1")(h, cond)
    h = Conv(self.features, (3, 3), dtype=self.dtype, name="conv1")(h)
    gain = self.param("gain", nn.initializers.ones, (), jnp.float32)
    return shortcut + times_gain(h, gain)


class CrossAttention(nn.Module):
  """Image positions attend to T5 token states (masked); residual with a zero-init gain.

  Masked tokens get exactly zero weight, so their states cannot affect the output; a row with
  no valid token at all gets a zero update.
  """
  num_heads: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, words: jax.Array, mask: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"channels {c} not divisible by num_heads {self.num_heads}.")
    dh = c // self.num_heads
    q_in = nn.LayerNorm(dtype=self.dtype, name="q_norm")(x).reshape(b, h * w, c)
    kv_in = nn.LayerNorm(dtype=self.dtype, name="kv_norm")(words.astype(self.dtype))
    q = Dense(c, use_bias=False, dtype=self.dtype, name="query")(q_in)  # [batch, hw, c]
    k = Dense(c, use_bias=False, dtype=self.dtype, name="key")(kv_in)  # [batch, length, c]
    v = Dense(c, dtype=self.dtype, name="value")(kv_in)  # [batch, length, c]
    q = q.reshape(b, h * w, self.num_heads, dh)
    k = k.reshape(b, -1, self.num_heads, dh)
    v = v.reshape(b, -1, self.num_heads, dh)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k,  # fp32 even for bf16 q, k: not rounded
                        preferred_element_type=jnp.float32) / jnp.sqrt(dh)
    valid = (mask > 0)[:, None, None, :]  # [batch, 1, 1, length]
    logits = jnp.where(valid, logits, -1e30)
    weights = jnp.where(valid, jax.nn.softmax(logits, axis=-1), 0.0)  # [batch, heads, hw, length]
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), v).reshape(b, h * w, c)
    out = Dense(c, dtype=self.dtype, name="out")(out).reshape(b, h, w, c)
    out = jnp.where(jnp.any(mask > 0, axis=-1)[:, None, None, None], out, 0)  # not out's bias
    gain = self.param("gain", nn.initializers.zeros, (), jnp.float32)
    return x + times_gain(out, gain)


def _num_heads(channels: int, head_dim: int = 64) -> int:
  return channels // head_dim if channels >= head_dim and channels % head_dim == 0 else 1


class Generator(nn.Module):
  """Text-conditioned generator: 4x4 start, UpBlocks to `resolution`, cross-attention at
  `attn_resolutions`.

  The sentence is projected to `cond_dim` and concatenated with z: cond = [z, proj(sentence)]
  feeds the 4x4 start (DF-GAN's start reads z alone) and every fusion block.
  """
  resolution: int
  nf: int = 32
  z_dim: int = 100
  cond_dim: int = 256
  attn_resolutions: Sequence[int] = (16,)
  dtype: Dtype = jnp.float32

  def _channels(self) -> list[int]:
    return [self.nf * m for m in reversed(channel_multipliers(self.resolution))]

  def block_resolutions(self) -> list[int]:
    """Output resolution of each UpBlock (8, 16, ..., resolution)."""
    return [4 * 2**(i + 1) for i in range(len(self._channels()) - 1)]

  @nn.compact
  def __call__(self, z: jax.Array, sent: jax.Array, words: jax.Array,
               word_mask: jax.Array) -> jax.Array:
    channels = self._channels()  # validates the resolution
    block_res = self.block_resolutions()
    bad = [r for r in self.attn_resolutions if r not in block_res]
    if bad:
      raise ValueError(f"attn_resolutions {tuple(self.attn_resolutions)} contains {bad}; at "
                       f"resolution {self.resolution} the allowed ones are {block_res}.")
    if z.ndim != 2 or z.shape[-1] != self.z_dim:
      raise ValueError(f"z must be [batch, {self.z_dim}], got {z.shape}.")
    if sent.ndim != 2 or words.ndim != 3 or word_mask.shape != words.shape[:2]:
      raise ValueError(f"expected sent [b, d], words [b, L, d], word_mask [b, L]; got "
                       f"{sent.shape}, {words.shape}, {word_mask.shape}.")
    b = z.shape[0]
    if sent.shape[0] != b or words.shape[0] != b:  # else a concatenate's or reshape's error
      raise ValueError(f"z, sent and words must hold one row per image; got batches of {b}, "
                       f"{sent.shape[0]} and {words.shape[0]} (z {z.shape}, sent {sent.shape}, "
                       f"words {words.shape}): repeat the text's rows for several images.")
    s = Dense(self.cond_dim, dtype=self.dtype, name="sent_proj")(sent.astype(self.dtype))
    cond = jnp.concatenate([z.astype(self.dtype), s], axis=-1)  # [batch, z_dim + cond_dim]
    x = Dense(4 * 4 * channels[0], dtype=self.dtype, name="start")(cond)
    x = x.reshape(b, 4, 4, channels[0])  # [batch, 4, 4, 8*nf]
    for i, (out_ch, res) in enumerate(zip(channels[1:], block_res)):
      x = UpBlock(out_ch, self.dtype, name=f"block{i}")(x, cond)  # [batch, res, res, out_ch]
      if res in self.attn_resolutions:
        x = CrossAttention(_num_heads(out_ch), self.dtype, name=f"attn{res}")(x, words, word_mask)
    x = Conv(3, (3, 3), dtype=self.dtype, name="to_rgb")(lrelu(x))
    return jnp.tanh(x.astype(jnp.float32))  # [batch, resolution, resolution, 3]
