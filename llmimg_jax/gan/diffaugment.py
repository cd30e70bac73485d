"""DiffAugment (Zhao et al., 2020) in pure JAX: differentiable, jittable, explicit rng key.

Apply the same policy to every image batch D sees (real and fake), each call with its own key.
Images are [batch, height, width, channels]; the dtype is preserved.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

AUGMENTS = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
  names = tuple(p.strip() for p in policy.split(",") if p.strip())
  bad = [n for n in names if n not in AUGMENTS]
  if bad:
    raise ValueError(f"Unknown DiffAugment op(s) {bad} in policy {policy!r}; "
                     f"allowed: {', '.join(AUGMENTS)}.")
  return names


def _uniform(key: jax.Array, b: int, dtype) -> jax.Array:
  return jax.random.uniform(key, (b, 1, 1, 1), jnp.float32).astype(dtype)


def color(x: jax.Array, key: jax.Array) -> jax.Array:
  """Random brightness (+U[-0.5, 0.5]), saturation (x U[0, 2]) and contrast (x U[0.5, 1.5])."""
  kb, ks, kc = jax.random.split(key, 3)
  b = x.shape[0]
  x = x + (_uniform(kb, b, x.dtype) - 0.5)
  mean = jnp.mean(x, axis=3, keepdims=True)
  x = (x - mean) * (_uniform(ks, b, x.dtype) * 2) + mean
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  return (x - mean) * (_uniform(kc, b, x.dtype) + 0.5) + mean


def translate(x: jax.Array, shift_h: jax.Array, shift_w: jax.Array,
              max_shift: tuple[int, int] | None = None) -> jax.Array:
  """out[i, j] = x[i - shift_h, j - shift_w], zero where that falls outside. Shifts are [batch]
  integers with |shift| <= max_shift (default: the height and width), the zero padding added."""
  _, h, w, _ = x.shape
  ph, pw = max_shift or (h, w)
  padded = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))  # [b, h + 2 ph, w + 2 pw, c]

  def one(img, dh, dw):
    return jax.lax.dynamic_slice(img, (ph - dh, pw - dw, jnp.zeros_like(dh)), (h, w, img.shape[-1]))

  return jax.vmap(one)(padded, shift_h, shift_w)


def translation(x: jax.Array, key: jax.Array, ratio: float = 0.125) -> jax.Array:
  """Random integer shift in [-ratio*size, ratio*size] per image and axis, zero padding."""
  _, h, w, _ = x.shape
  sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
  kh, kw = jax.random.split(key)
  dh = jax.random.randint(kh, (x.shape[0],), -sh, sh + 1, jnp.int32)
  dw = jax.random.randint(kw, (x.shape[0],), -sw, sw + 1, jnp.int32)
  return translate(x, dh, dw, max_shift=(sh, sw))


def cutout(x: jax.Array, key: jax.Array, ratio: float = 0.5) -> jax.Array:
  """Zeroes one random (ratio*h) x (ratio*w) square per image (it may be clipped by the border)."""
  b, h, w, _ = x.shape
  ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
  kh, kw = jax.random.split(key)
  # As in the reference: centres in [0, size + (1 - cut % 2)), window starts at centre - cut//2.
  oh = jax.random.randint(kh, (b, 1, 1, 1), 0, h + (1 - ch % 2), jnp.int32) - ch // 2
  ow = jax.random.randint(kw, (b, 1, 1, 1), 0, w + (1 - cw % 2), jnp.int32) - cw // 2
  rows = jnp.arange(h)[None, :, None, None]
  cols = jnp.arange(w)[None, None, :, None]
  inside = (rows >= oh) & (rows < oh + ch) & (cols >= ow) & (cols < ow + cw)  # [b, h, w, 1]
  return jnp.where(inside, jnp.zeros((), x.dtype), x)


_OPS = {"color": color, "translation": translation, "cutout": cutout}


def diff_augment(x: jax.Array, key: jax.Array,
                 policy: str = "color,translation,cutout") -> jax.Array:
  """Applies the ops of a comma-separated policy in order to float images x [b, h, w, c] (as D
  sees them, in [-1, 1]); '' is the identity."""
  if x.ndim != 4 or not jnp.issubdtype(x.dtype, jnp.floating):  # uint8: 127.5 everywhere
    raise ValueError(f"diff_augment(x, key, policy) takes float images x [batch, height, width, "
                     f"channels]; got x {x.dtype} {list(x.shape)} (uint8 images: x / 127.5 - 1; "
                     "the key comes second).")
  names = parse_policy(policy)
  if not names:
    return x
  keys = jax.random.split(key, len(names))
  for name, k in zip(names, keys):
    x = _OPS[name](x, k)
  return x
