"""GAN losses for the matching-aware text-to-image setup (all return float32 scalars)."""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]  # (images, sentences) -> [batch]

GRADIENT_PENALTIES = ("ma_gp", "r1", "none")


def mismatched(x: jax.Array) -> jax.Array:
  """Pairs each item with its neighbour's: rolls the batch by one."""
  return jnp.roll(x, 1, axis=0)


def _caption_keys(input_ids: jax.Array, mask: jax.Array) -> jax.Array:
  """Token ids [b, L] with the padding (mask 0) as -1: equal rows are the same caption."""
  return jnp.where(mask > 0, input_ids, -1)


def mismatch_weights(input_ids: jax.Array, mask: jax.Array) -> jax.Array:
  """[b] float32: 1 where `mismatched` pairs item i with another caption than its own, 0 where
  the neighbour's caption is the same one (repeated captions in a batch): that pair matches."""
  keys = _caption_keys(input_ids, mask)
  return jnp.any(keys != mismatched(keys), axis=-1).astype(jnp.float32)


def d_hinge_loss(real_logits: jax.Array, fake_logits: jax.Array,
                 mismatch_logits: jax.Array, mismatch_weight: jax.Array | None = None
                 ) -> jax.Array:
  """mean relu(1 - D(real, s)) + 0.5 * (mean relu(1 + D(fake, s)) + mean relu(1 + D(real, s'))).

  mismatch_weight [b] (`mismatch_weights`): the mismatch term is the mean over the pairs of
  weight 1 only (0 when there are none): a "mismatched" sentence that is the image's own caption
  is a matching pair, which the term would push down while the real term pushes it up."""
  real = jnp.mean(jax.nn.relu(1.0 - real_logits.astype(jnp.float32)))
  fake = jnp.mean(jax.nn.relu(1.0 + fake_logits.astype(jnp.float32)))
  mis_each = jax.nn.relu(1.0 + mismatch_logits.astype(jnp.float32))
  if mismatch_weight is None:
    mis = jnp.mean(mis_each)
  else:
    w = mismatch_weight.astype(jnp.float32)
    mis = jnp.sum(w * mis_each) / jnp.maximum(jnp.sum(w), 1.0)
  return real + 0.5 * (fake + mis)


def g_hinge_loss(fake_logits: jax.Array) -> jax.Array:
  """-mean D(fake, s)."""
  return -jnp.mean(fake_logits.astype(jnp.float32))


def _input_grads(logits_fn: LogitsFn, x: jax.Array, s: jax.Array) -> tuple[jax.Array, jax.Array]:
  if not jnp.issubdtype(x.dtype, jnp.floating):  # cast below, D would see 0..255 unrefused
    raise ValueError(f"Gradient penalties take the float images D sees (in [-1, 1]); got "
                     f"{x.dtype} ones: convert uint8 images with x / 127.5 - 1.")
  # D scores each pair independently, so the gradient of the batch sum gives per-example grads.
  def total(x_, s_):
    return jnp.sum(logits_fn(x_, s_).astype(jnp.float32))
  return jax.grad(total, argnums=(0, 1))(x.astype(jnp.float32), s.astype(jnp.float32))


def ma_gp(logits_fn: LogitsFn, x: jax.Array, s: jax.Array, k: float = 2.0,
          p: float = 6.0) -> jax.Array:
  """DF-GAN matching-aware gradient penalty: k * mean_i ||[d/dx, d/ds] D(x_i, s_i)||_2 ** p.

  Taken jointly over the (real image, matching sentence) inputs. Computed as (sum of squares) **
  (p / 2), which is differentiable at a zero gradient (no sqrt) for p >= 2.
  """
  gx, gs = _input_grads(logits_fn, x, s)
  sq = (jnp.sum(jnp.square(gx).reshape(gx.shape[0], -1), axis=1)
        + jnp.sum(jnp.square(gs).reshape(gs.shape[0], -1), axis=1))  # [batch]
  return k * jnp.mean(sq ** (p / 2.0))


def r1_penalty(logits_fn: LogitsFn, x: jax.Array, s: jax.Array,
               gamma: float = 10.0) -> jax.Array:
  """R1: gamma / 2 * mean_i ||d/dx D(x_i, s_i)||_2 ** 2 (image gradient only)."""
  gx, _ = _input_grads(logits_fn, x, s)
  return 0.5 * gamma * jnp.mean(jnp.sum(jnp.square(gx).reshape(gx.shape[0], -1), axis=1))


def gradient_penalty(kind: str, logits_fn: LogitsFn, x: jax.Array, s: jax.Array, *,
                     k: float = 2.0, p: float = 6.0, gamma: float = 10.0) -> jax.Array:
  """Switch between 'ma_gp' (k, p), 'r1' (gamma) and 'none' (returns 0)."""
  if kind == "ma_gp":
    return ma_gp(logits_fn, x, s, k=k, p=p)
  if kind == "r1":
    return r1_penalty(logits_fn, x, s, gamma=gamma)
  if kind == "none":
    return jnp.zeros((), jnp.float32)
  raise ValueError(f"Unknown gradient penalty {kind!r}; allowed: {', '.join(GRADIENT_PENALTIES)}.")


def info_nce(image_emb: jax.Array, text_emb: jax.Array, temperature: float = 0.1) -> jax.Array:
  """Symmetric InfoNCE over cosine similarities: pair i matches pair i.

  0.5 * (CE(image -> text) + CE(text -> image)), logits = cos(image_i, text_j) / temperature.
  (Repeated captions need no mask here, unlike the hinge's mismatched pairs: their text
  embeddings are equal, and with equal embeddings this loss and its gradients are those of the
  multi-positive InfoNCE.)
  """
  a = image_emb.astype(jnp.float32)
  b = text_emb.astype(jnp.float32)
  a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-6)
  b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-6)
  logits = a @ b.T / temperature  # [batch, batch]
  labels = jnp.arange(a.shape[0])
  i2t = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  t2i = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
  return 0.5 * (jnp.mean(i2t) + jnp.mean(t2i))
