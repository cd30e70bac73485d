"""DF-GAN-style discriminator: a residual image backbone plus matching-aware and contrastive heads.

The backbone runs once per image batch; the heads take its features, so one forward pass serves
(real, matching), (real, mismatched) and (fake, matching):

  feats = D.apply(params, images, method=D.features)        # [batch, 4, 4, 8*nf]
  real = D.apply(params, feats, sent, method=D.logits)       # [batch]
  mis = D.apply(params, feats, mismatched(sent), method=D.logits)

`D.init(key, images, sent)` (i.e. `__call__`) creates every parameter.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from llmimg_jax.gan.common import Dtype, avgpool2x, channel_multipliers, lrelu
from llmimg_jax.gan.layers import Conv, Dense, add_bias, conv2d, times_gain


def space_to_depth2x(x: jax.Array) -> jax.Array:
  """[batch, 2h, 2w, c] -> [batch, h, w, 4c], channels ordered (row parity, column parity, c)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // 2, w // 2, 4 * c)


def depth_to_space2x(x: jax.Array) -> jax.Array:
  """The inverse of `space_to_depth2x`: [batch, h, w, 4c] -> [batch, 2h, 2w, c]."""
  b, h, w, c4 = x.shape
  x = x.reshape(b, h, w, 2, 2, c4 // 4).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, 2 * h, 2 * w, c4 // 4)


def _matmul_kernel(kernel: jax.Array) -> jax.Array:
  """[4, 4, c, out] -> the matmul form's [(p, q, r, s, c), out]."""
  c, out = kernel.shape[2:]
  # kernel[2p + r, 2q + s] multiplies padded[2(i + p) + r, 2(j + q) + s] = s2d[i + p, j + q, (r, s)]
  k = kernel.reshape(2, 2, 2, 2, c, out).transpose(0, 2, 1, 3, 4, 5)
  return k.reshape(16 * c, out)


def _conv4x4_stride2_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The conv as im2col + one matmul: x padded, rearranged space-to-depth, its four 2x2-shifted
  views concatenated (no duplication beyond 4x)."""
  _, h, w, _ = x.shape  # h, w even
  k = _matmul_kernel(kernel)  # [(p, q, r, s, c), out]
  s2d = space_to_depth2x(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))))
  ho, wo = h // 2, w // 2
  cols = jnp.concatenate([s2d[:, p:p + ho, q:q + wo] for p in (0, 1) for q in (0, 1)], axis=-1)
  return cols @ k  # [batch, h/2, w/2, out]


def _conv4x4_stride2_direct(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return conv2d(x, kernel, ((1, 1), (1, 1)), strides=(2, 2))


def conv4x4_stride2(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """nn.Conv(4x4, stride 2, padding 1, no bias) of x [b, h, w, c] with kernel [4, 4, c, out].

  Each pass takes the form XLA:CPU runs fastest (benchmarks/strided_conv.py): the forward is
  XLA's strided conv; the input gradient is the matmul form's (`_conv4x4_stride2_transpose`),
  because autodiff's input-dilated conv is slow to differentiate again (MA-GP: 7-9x slower);
  the kernel gradient is XLA's (first order only: MA-GP differentiates input gradients, never
  kernel gradients). Even height and width only (the matmul form's input gradient assumes them).
  """
  if x.shape[1] % 2 or x.shape[2] % 2:
    raise ValueError(f"conv4x4_stride2 needs an even height and width, got x of shape {x.shape}; "
                     "use nn.Conv(features, (4, 4), strides=2, padding=1) for odd sizes.")
  return _conv4x4_stride2(x, kernel)


@jax.custom_vjp
def _conv4x4_stride2(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return _conv4x4_stride2_direct(x, kernel)


def _conv4x4_stride2_fwd(x, kernel):
  return _conv4x4_stride2_direct(x, kernel), (x, kernel)


@jax.custom_vjp
def _conv4x4_stride2_transpose(g: jax.Array, kernel: jax.Array) -> jax.Array:
  """The input gradient of conv4x4_stride2 for output gradient g, in the matmul form (kernel^T
  matmul, then the four views scattered back), summed in fp32 and rounded once to g's dtype (as
  XLA's conv accumulates; rounded per view, bf16 had ~1.9x its error). Its own derivatives, which
  MA-GP takes, are XLA's strided conv (w.r.t. g) and that conv's kernel gradient (w.r.t. the
  kernel)."""
  b, ho, wo, _ = g.shape
  c = kernel.shape[2]
  cols = jax.lax.dot_general(g, _matmul_kernel(kernel).astype(g.dtype), (((3,), (1,)), ((), ())),
                             preferred_element_type=jnp.float32)  # [b, ho, wo, (p, q, r, s, c)]
  cols = cols.reshape(b, ho, wo, 4, 4 * c)
  # The transpose of cols[i, j, (p, q)] = s2d[i + p, j + q]: each view added back at its offset.
  s2d = sum(jnp.pad(cols[:, :, :, 2 * p + q], ((0, 0), (p, 1 - p), (q, 1 - q), (0, 0)))
            for p in (0, 1) for q in (0, 1))  # [b, ho + 1, wo + 1, (r, s, c)]
  return depth_to_space2x(s2d)[:, 1:-1, 1:-1].astype(g.dtype)  # unpadded: [b, 2ho, 2wo, c]


def _transpose_fwd(g, kernel):
  return _conv4x4_stride2_transpose(g, kernel), (g, kernel)


def _kernel_grad(x: jax.Array, g: jax.Array, kernel: jax.Array) -> jax.Array:
  """XLA's kernel gradient of the strided conv of x for output gradient g."""
  return jax.vjp(lambda k_: _conv4x4_stride2_direct(x, k_), kernel)[1](g)[0]


def _transpose_bwd(residuals, xdot):
  g, kernel = residuals
  return _conv4x4_stride2_direct(xdot, kernel), _kernel_grad(xdot, g, kernel)


_conv4x4_stride2_transpose.defvjp(_transpose_fwd, _transpose_bwd)


def _conv4x4_stride2_bwd(residuals, g):
  x, kernel = residuals
  return _conv4x4_stride2_transpose(g, kernel), _kernel_grad(x, g, kernel)


_conv4x4_stride2.defvjp(_conv4x4_stride2_fwd, _conv4x4_stride2_bwd)


class Conv4x4Stride2(nn.Module):
  """DF-GAN's downsampling conv (4x4, stride 2, padding 1) through `conv4x4_stride2`.

  Same function and same parameter as nn.Conv (`kernel` [4, 4, in, out], lecun-normal).
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (4, 4, x.shape[-1], self.features), jnp.float32)
    return conv4x4_stride2(x.astype(self.dtype), kernel.astype(self.dtype))  # [b, h/2, w/2, out]


class WholeImageConv(nn.Module):
  """A VALID conv whose kernel covers the whole input (one output position), as a matmul; the
  parameters are nn.Conv's (`kernel` [h, w, in, out], `bias` [out])."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (h, w, c, self.features),
                        jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    flat = x.astype(self.dtype).reshape(b, h * w * c)  # [batch, h*w*in]
    return add_bias(flat @ kernel.reshape(h * w * c, -1).astype(self.dtype),
                    bias.astype(self.dtype))  # [batch, features]


class DownBlock(nn.Module):
  """DF-GAN D_Block: shortcut(avgpool, 1x1 conv) + gain * (conv4x4/2 -> lrelu -> conv3x3 -> lrelu).

  The gain starts at 0 as in DF-GAN. The shortcut pools before the 1x1 conv (same result as
  conv-then-pool, a quarter of the cost).
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # x: [batch, height, width, in_features]
    h = Conv4x4Stride2(self.features, self.dtype, name="conv0")(x)  # [b, h/2, w/2, features]
    h = lrelu(h)
    h = lrelu(Conv(self.features, (3, 3), use_bias=False, dtype=self.dtype, name="conv1")(h))
    shortcut = avgpool2x(x)
    if x.shape[-1] != self.features:
      shortcut = Conv(self.features, (1, 1), dtype=self.dtype, name="shortcut")(shortcut)
    gain = self.param("gain", nn.initializers.zeros, (), jnp.float32)
    return shortcut + times_gain(h, gain)


class Discriminator(nn.Module):
  """Image backbone R -> 4x4x(8*nf); matching-aware logit head; optional contrastive head.

  Attributes:
    cond_dim: width the sentence is projected to before being tiled onto the 4x4 features.
    embed_dim: width of the contrastive image/text embeddings.
    contrastive: whether the contrastive (InfoNCE) head exists.
  """
  resolution: int
  nf: int = 32
  cond_dim: int = 128
  embed_dim: int = 128
  contrastive: bool = True
  dtype: Dtype = jnp.float32

  def setup(self):
    chs = [self.nf * m for m in channel_multipliers(self.resolution)]  # validates resolution
    self.conv_img = Conv(chs[0], (3, 3), dtype=self.dtype)
    self.blocks = [DownBlock(c, self.dtype) for c in chs[1:]]
    self.sent_proj = Dense(self.cond_dim, dtype=self.dtype)
    # Both with biases, which DF-GAN's NetC leaves out (2 * nf + 1 parameters).
    self.joint_conv = Conv(2 * self.nf, (3, 3), dtype=self.dtype)
    self.logit_conv = WholeImageConv(1, dtype=self.dtype)  # a 4x4 VALID conv
    if self.contrastive:
      self.image_proj = Dense(self.embed_dim, dtype=self.dtype)
      self.text_proj = Dense(self.embed_dim, dtype=self.dtype)

  def features(self, x: jax.Array) -> jax.Array:
    """[batch, R, R, 3] float images in [-1, 1] -> [batch, 4, 4, 8*nf] features."""
    if x.ndim != 4 or x.shape[1:] != (self.resolution, self.resolution, 3):
      raise ValueError(f"expected images [batch, {self.resolution}, {self.resolution}, 3], "
                       f"got {x.shape}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):  # uint8 would be read as 0..255, not [-1, 1]
      raise ValueError(f"expected float images in [-1, 1], got {x.dtype} ones; convert uint8 "
                       "images (a dataset's, the Sampler's) with x / 127.5 - 1, as the train "
                       "step does.")
    h = self.conv_img(x.astype(self.dtype))  # [batch, R, R, nf]
    for block in self.blocks:
      h = block(h)
    return h  # [batch, 4, 4, 8*nf]

  def logits(self, features: jax.Array, sent: jax.Array) -> jax.Array:
    """Matching-aware head: one float32 logit per (image, sentence) pair -> [batch]; sent
    [batch, d], one row per image (as the Generator takes it)."""
    b = features.shape[0]
    if sent.shape[0] != b:  # one row was tiled over the images (text_embedding's stayed one)
      raise ValueError(f"images and sent must hold one row per image; got batches of {b} and "
                       f"{sent.shape[0]} (sent {sent.shape}): repeat the sentence's rows for "
                       f"several images (jnp.repeat(sent, {b}, axis=0) for one).")
    s = self.sent_proj(sent.astype(self.dtype))  # [batch, cond_dim]
    s = jnp.broadcast_to(s[:, None, None, :], (b, 4, 4, self.cond_dim))
    h = jnp.concatenate([features.astype(self.dtype), s], axis=-1)  # [batch, 4, 4, C + cond]
    h = lrelu(self.joint_conv(h))  # [batch, 4, 4, 2*nf]
    return self.logit_conv(h).reshape(b).astype(jnp.float32)  # [batch]

  def image_embedding(self, features: jax.Array) -> jax.Array:
    """Global-average-pooled features projected to [batch, embed_dim] (float32, unnormalised)."""
    self._require_contrastive()
    pooled = jnp.mean(features.astype(self.dtype), axis=(1, 2))  # [batch, C]
    return self.image_proj(pooled).astype(jnp.float32)

  def text_embedding(self, sent: jax.Array) -> jax.Array:
    """Sentence projected to [batch, embed_dim] (float32, unnormalised)."""
    self._require_contrastive()
    return self.text_proj(sent.astype(self.dtype)).astype(jnp.float32)

  def _require_contrastive(self):
    if not self.contrastive:
      raise ValueError("this Discriminator was built with contrastive=False: no embedding head.")

  def __call__(self, x: jax.Array, sent: jax.Array) -> dict[str, jax.Array]:
    """Runs every head on (x, sent); use it for init. Keys: logits, and with the contrastive
    head image_embedding and text_embedding."""
    feats = self.features(x)
    out = {"logits": self.logits(feats, sent)}
    if self.contrastive:
      out["image_embedding"] = self.image_embedding(feats)
      out["text_embedding"] = self.text_embedding(sent)
    return out
