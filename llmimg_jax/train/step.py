"""One GAN update: discriminator (and trainable text encoder), then generator, then EMA.

As in DF-GAN, one batch of fakes serves both halves: the generator runs forward once under
`jax.vjp`, the discriminator learns from the detached fakes, and the generator's gradient is the
updated discriminator's gradient w.r.t. those same fakes pulled back through the saved vjp.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from llmimg_jax import gan
from llmimg_jax.gan.common import image_noise
from llmimg_jax.train.state import Models, TrainState

Metrics = dict[str, jax.Array]
# A metric KEY that a step may not measure comes with KEY + MEASURED, 1.0 where it did (gp between
# lazy penalties, d_mismatch with no mismatched pair): no NaN, which jax_debug_nans would stop on.
MEASURED = "_measured"


def encode_text(models: Models, text_params: Any, input_ids: jax.Array, mask: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
  """T5 token states [batch, length, d_text] and their mask-aware mean [batch, d_text], in fp32."""
  words = models.text_encoder.apply({"params": text_params}, input_ids, mask).astype(jnp.float32)
  return words, gan.sentence_embedding(words, mask)


def _d_apply(models: Models, params, *args, method: str):
  d = models.discriminator
  return d.apply({"params": params}, *args, method=getattr(d, method))


def _in_batch_chunks(fn, chunks: int, *args: jax.Array) -> jax.Array:
  """fn(*args) as `chunks` independent slices of the batch axis, concatenated.

  The same values (G and D's features are per example). XLA:CPU runs the independent slices
  concurrently, one per core, which beats splitting each op over the cores (RESULTS.md).
  """
  if chunks == 1 or args[0].shape[0] % chunks:
    return fn(*args)
  slices = zip(*(jnp.split(a, chunks) for a in args))
  return jnp.concatenate([fn(*s) for s in slices])


def _contrastive(models: Models, d_params: Any, feats: jax.Array, sent: jax.Array) -> jax.Array:
  """InfoNCE between D's image embeddings of `feats` [b, 4, 4, C] and its text embeddings of
  `sent` [b, d]: matching pairs against the batch's other pairs."""
  return gan.info_nce(_d_apply(models, d_params, feats, method="image_embedding"),
                      _d_apply(models, d_params, sent, method="text_embedding"),
                      models.config.loss.contrastive_temperature)


def _lazy_penalty(every: int, step: jax.Array, penalty_fn: Callable[[], jax.Array]
                  ) -> tuple[jax.Array, Metrics]:
  """Lazy regularisation (as StyleGAN2 does for R1): the penalty, whose double backward pass
  costs several plain D steps, every `every` steps, scaled by `every`; 0 at the other steps.

  And its metrics: the penalty itself (unscaled), and whether this step computed it, so that the
  logged mean is over the steps that did (summaries.window_means), whatever train.log_every.
  """
  scaled = lambda: every * penalty_fn()
  if every == 1:
    penalty, computed = scaled(), jnp.ones((), bool)
  else:
    computed = step % every == 0
    penalty = jax.lax.cond(computed, scaled, lambda: jnp.zeros((), jnp.float32))
  return penalty, {"gp": penalty / every, "gp" + MEASURED: computed.astype(jnp.float32)}


def train_step(models: Models, state: TrainState, batch: dict[str, jax.Array],
               batch_chunks: int = 1) -> tuple[TrainState, Metrics]:
  """One update from a global batch: image uint8 [b, R, R, 3], input_ids/attention_mask [b, L].

  batch_chunks > 1 runs G and D's backbone on that many slices of the batch (same values; see
  `loop.batch_chunks`).
  """
  cfg = models.config
  rng = jax.random.fold_in(state.rng, state.step)
  k_z, k_aug_real, k_aug_fake, k_aug_g = jax.random.split(rng, 4)
  real = batch["image"].astype(jnp.float32) / 127.5 - 1.0  # [b, R, R, 3]
  ids, mask = batch["input_ids"], batch["attention_mask"]  # [b, L]
  z = jax.random.normal(k_z, (real.shape[0], cfg.model.z_dim), jnp.float32)  # [b, z_dim]
  augment = functools.partial(gan.diff_augment, policy=cfg.loss.diffaugment)

  # One T5 forward serves both halves: G reads its outputs; D's loss is differentiated w.r.t. the
  # sentence embedding, which the saved vjp pulls back into the text encoder's gradient.
  (words, sent), text_vjp = jax.vjp(
      lambda t: encode_text(models, t, ids, mask), state.text_params)
  fake, g_vjp = jax.vjp(  # [b, R, R, 3]
      lambda g: _in_batch_chunks(functools.partial(models.generator.apply, {"params": g}),
                                 batch_chunks, z, sent, words, mask), state.g_params)

  def features(d_params, images):  # [b, R, R, 3] -> [b, 4, 4, C]
    return _in_batch_chunks(lambda x: _d_apply(models, d_params, x, method="features"),
                            batch_chunks, images)

  def d_loss_fn(d_params, sent):
    real_aug = augment(real, k_aug_real)
    feats_real = features(d_params, real_aug)
    logits_real = _d_apply(models, d_params, feats_real, sent, method="logits")
    logits_mismatch = _d_apply(models, d_params, feats_real, gan.mismatched(sent), method="logits")
    feats_fake = features(d_params, augment(jax.lax.stop_gradient(fake), k_aug_fake))
    logits_fake = _d_apply(models, d_params, feats_fake, sent, method="logits")
    # A rolled sentence that is the image's own caption (a caption repeated in the batch) is a
    # matching pair: left out of the mismatch term, and of its metric (unmeasured with no such
    # pair: not a NaN, which would stop a run under jax_debug_nans).
    mismatch_weight = gan.mismatch_weights(ids, mask)
    hinge = gan.d_hinge_loss(logits_real, logits_fake, logits_mismatch, mismatch_weight)
    pairs = jnp.sum(mismatch_weight)
    d_mismatch = (jnp.sum(jnp.where(mismatch_weight > 0, logits_mismatch.astype(jnp.float32), 0.0))
                  / jnp.maximum(pairs, 1.0))

    def logits_fn(x, s):
      feats = features(d_params, x)  # [b, 4, 4, C]
      return _d_apply(models, d_params, feats, s, method="logits")  # [b]

    penalty, gp_metrics = _lazy_penalty(
        cfg.loss.gp_every, state.step,
        lambda: gan.gradient_penalty(cfg.loss.gp, logits_fn, real_aug, sent, k=cfg.loss.magp_k,
                                     p=cfg.loss.magp_p, gamma=cfg.loss.r1_gamma))
    loss = hinge + penalty
    metrics = {"d_hinge": hinge, **gp_metrics, "d_real": logits_real.mean(),
               "d_fake": logits_fake.mean(), "d_mismatch": d_mismatch,
               "d_mismatch" + MEASURED: (pairs > 0).astype(jnp.float32)}
    if cfg.loss.contrastive_weight > 0:
      contrastive = _contrastive(models, d_params, feats_real, sent)
      loss += cfg.loss.contrastive_weight * contrastive
      metrics["d_contrastive"] = contrastive
    return loss, metrics

  (d_loss, d_metrics), (d_grads, sent_grads) = jax.value_and_grad(
      d_loss_fn, argnums=(0, 1), has_aux=True)(state.d_params, sent)
  (text_grads,) = text_vjp((jnp.zeros_like(words), sent_grads))
  d_updates, d_opt_state = models.d_tx.update(d_grads, state.d_opt_state, state.d_params)
  d_params = optax.apply_updates(state.d_params, d_updates)
  text_params, text_opt_state = state.text_params, state.text_opt_state
  if models.trainable_text:
    t_updates, text_opt_state = models.text_tx.update(text_grads, text_opt_state, text_params)
    text_params = optax.apply_updates(text_params, t_updates)

  def g_loss_fn(fake):
    feats = features(d_params, augment(fake, k_aug_g))
    adversarial = gan.g_hinge_loss(_d_apply(models, d_params, feats, sent, method="logits"))
    metrics = {"g_adversarial": adversarial}
    loss = adversarial
    if cfg.loss.contrastive_weight > 0 and cfg.loss.contrastive_g:
      contrastive = _contrastive(models, d_params, feats, sent)
      loss += cfg.loss.contrastive_weight * contrastive
      metrics["g_contrastive"] = contrastive
    return loss, metrics

  (g_loss, g_metrics), grad_fake = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
  (g_grads,) = g_vjp(grad_fake)
  g_updates, g_opt_state = models.g_tx.update(g_grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, g_updates)
  # EMA with warm-up, so short runs are not dominated by the initial weights.
  decay = jnp.minimum(cfg.train.ema_decay, (1.0 + state.step) / (10.0 + state.step))
  ema_params = gan.ema_update(state.ema_params, g_params, decay)

  norms = {"grad_norm_g": optax.tree.norm(g_grads), "grad_norm_d": optax.tree.norm(d_grads)}
  if models.trainable_text:
    norms["grad_norm_text"] = optax.tree.norm(text_grads)
  # Any NaN/Inf in a gradient makes its norm non-finite: one cheap check for the whole update.
  ok = jnp.all(jnp.isfinite(jnp.stack([d_loss, g_loss, *norms.values()])))
  updated = state.replace(
      g_params=g_params, d_params=d_params, ema_params=ema_params, text_params=text_params,
      g_opt_state=g_opt_state, d_opt_state=d_opt_state, text_opt_state=text_opt_state)
  # A non-finite loss or gradient skips the whole update; the loop counts and stops on a streak.
  # (lax.cond, not a per-leaf jnp.where: that doubles the step's compile time on CPU.)
  new_state = jax.lax.cond(ok, lambda: updated, lambda: state)
  new_state = new_state.replace(step=state.step + 1,
                                bad_steps=jnp.where(ok, 0, state.bad_steps + 1))
  metrics = {"d_loss": d_loss, "g_loss": g_loss, **d_metrics, **g_metrics, **norms,
             "finite": ok.astype(jnp.float32), "bad_steps": new_state.bad_steps}
  return new_state, metrics


def generate_images(models: Models, g_params: Any, text_params: Any, z: jax.Array,
                    input_ids: jax.Array, mask: jax.Array) -> jax.Array:
  """Images uint8 [b, R, R, 3] from noise [b, z_dim] and tokenized prompts [b, L]."""
  return generate_checked_images(models, g_params, text_params, z, input_ids, mask)[0]


def generate_checked_images(models: Models, g_params: Any, text_params: Any, z: jax.Array,
                            input_ids: jax.Array, mask: jax.Array
                            ) -> tuple[jax.Array, jax.Array]:
  """generate_images' images, and bool [b]: whether the generator's output for each was finite
  (NaN or inf in it becomes black or white pixels in uint8)."""
  words, sent = encode_text(models, text_params, input_ids, mask)
  images = models.generator.apply({"params": g_params}, z, sent, words, mask)  # [b, R, R, 3]
  pixels = jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
  return pixels, jnp.isfinite(images).all(axis=(1, 2, 3))


def generate_numbered_images(models: Models, g_params: Any, text_params: Any, key: jax.Array,
                             indices: jax.Array, input_ids: jax.Array, mask: jax.Array,
                             truncation: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """generate_checked_images with image i's noise drawn on the device from its number
  `indices[i]` (gan.common.image_noise: independent of the batch it is in)."""
  z = image_noise(key, indices, models.config.model.z_dim, truncation)  # [b, z_dim]
  return generate_checked_images(models, g_params, text_params, z, input_ids, mask)
