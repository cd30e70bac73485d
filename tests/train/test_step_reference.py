"""train_step against one step recomputed here from the modules' apply functions, jax.grad and
optax: D's losses, the lazy gradient penalty, D's update, G's gradient through the updated D, the
text encoder's update and the EMA (its warm-up, and its cap train.ema_decay one step later). Two
configs: MA-GP without DiffAugment (the default), and R1 with DiffAugment and without G's
contrastive term (which keys augment which images is checked on its own)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llmimg_jax import gan
from llmimg_jax.train.state import build_models, build_text
from llmimg_jax.train.step import train_step
# STEP: _host_state's step; with gp_every=2 the lazy penalty applies at it.
from tests.train.utils import STEP, _batch, _host_state, tiny_config

TOL = 1e-5  # relative error ||got - want|| / ||want|| of a tree; float32 noise here is ~1e-6
# A loss near 0 (g_adversarial, a mean of logits of either sign: 0.005 in r1_augmented) differs
# by float32 rounding of its O(1) terms, ~1e-7 absolute (eca6724's bias-gradient sum moved it to
# 1.1e-5 relative); the tolerance's absolute part.
ATOL = 1e-6
# Adam's moments, compared on their own: their count would dominate a norm of the whole state.
ADAM_FIELDS = ("mu", "nu")


def _config(data_dir, variant: str = "ma_gp"):
  config = tiny_config(data_dir)
  config.loss.gp_every = 2
  config.loss.diffaugment = ""
  # Distinct learning rates, so each must reach its own optimizer.
  config.train.lr_g, config.train.lr_d, config.train.lr_text = 1e-4, 3e-4, 2e-4
  # The EMA's warm-up (1 + step) / (10 + step) is 5/14 at STEP, under this cap; 6/15 one step
  # later, over it.
  config.train.ema_decay = 0.38
  if variant == "r1_augmented":
    config.loss.gp, config.loss.r1_gamma = "r1", 3.0
    config.loss.diffaugment = "color,translation,cutout"
    config.loss.contrastive_g = False
  return config


def _info_nce(a, b, temperature):  # [batch, dim] x2: symmetric InfoNCE over cosine similarities
  a = a / jnp.linalg.norm(a, axis=-1, keepdims=True)
  b = b / jnp.linalg.norm(b, axis=-1, keepdims=True)
  logits = a @ b.T / temperature  # [batch, batch]; pair i matches pair i
  diag = jnp.diagonal(logits)
  return 0.5 * (jnp.mean(jax.nn.logsumexp(logits, axis=1) - diag)
                + jnp.mean(jax.nn.logsumexp(logits, axis=0) - diag))


def _reference_step(models, state, batch):
  """(new params and optimizer states, gradients, metrics), from the definitions."""
  cfg, t = models.config, models.config.train
  D = models.discriminator
  d_apply = lambda p, *a, m: D.apply({"params": p}, *a, method=m)
  ids, mask = batch["input_ids"], batch["attention_mask"]  # [b, L]
  m = mask.astype(jnp.float32)

  def text(t_params):  # -> words [b, L, d], sentences [b, d]: the mean over unmasked tokens
    words = models.text_encoder.apply({"params": t_params}, ids, mask)
    return words, (words * m[..., None]).sum(1) / m.sum(1)[:, None]

  k_z, k_real, k_fake, k_g = jax.random.split(jax.random.fold_in(state.rng, state.step), 4)
  augment = lambda x, key: gan.diff_augment(x, key, cfg.loss.diffaugment)  # identity when off
  real = augment(jnp.asarray(batch["image"], jnp.float32) / 127.5 - 1.0, k_real)  # [b, R, R, 3]
  z = jax.random.normal(k_z, (real.shape[0], cfg.model.z_dim))  # [b, z_dim]
  words0, sent0 = text(state.text_params)  # G and G's loss read the step's one T5 forward
  generate = lambda g: models.generator.apply({"params": g}, z, sent0, words0, mask)
  fake = generate(state.g_params)  # [b, R, R, 3]: a constant for D
  w, temperature = cfg.loss.contrastive_weight, cfg.loss.contrastive_temperature

  def d_terms(d, t_params):
    sent = text(t_params)[1]
    feats_real = d_apply(d, real, m="features")  # [b, 4, 4, C]
    logit = lambda f, s: d_apply(d, f, s, m="logits")  # [b]
    real_l = logit(feats_real, sent)
    fake_l = logit(d_apply(d, augment(fake, k_fake), m="features"), sent)
    mis_l = logit(feats_real, jnp.concatenate([sent[-1:], sent[:-1]]))  # image i, sentence i-1

    def one(x, s):  # D(x_i, s_i) of one pair
      return logit(d_apply(d, x[None], m="features"), s[None])[0]

    gx, gs = jax.vmap(jax.grad(one, argnums=(0, 1)))(real, sent)  # of the augmented reals
    if cfg.loss.gp == "r1":  # the image gradient only
      gp = 0.5 * cfg.loss.r1_gamma * jnp.mean(jnp.sum(gx**2, axis=(1, 2, 3)))
    else:
      norm2 = jnp.sum(gx**2, axis=(1, 2, 3)) + jnp.sum(gs**2, axis=1)  # [b]
      gp = cfg.loss.magp_k * jnp.mean(norm2 ** (cfg.loss.magp_p / 2))
    # Sentence i - 1 that is image i's own caption (a caption repeated in the batch; _batch has
    # some) is a match, not a mismatch: the mismatch term averages over the other pairs.
    keys = jnp.where(mask > 0, ids, -1)
    own = jnp.all(keys == jnp.concatenate([keys[-1:], keys[:-1]]), axis=-1)  # [b]
    mis_term = jnp.sum(jnp.where(own, 0.0, jax.nn.relu(1 + mis_l))) / jnp.sum(~own)
    hinge = (jnp.mean(jax.nn.relu(1 - real_l))
             + 0.5 * (jnp.mean(jax.nn.relu(1 + fake_l)) + mis_term))
    contrastive = _info_nce(d_apply(d, feats_real, m="image_embedding"),
                            d_apply(d, sent, m="text_embedding"), temperature)
    loss = hinge + cfg.loss.gp_every * gp + w * contrastive
    return loss, {"d_loss": loss, "d_hinge": hinge, "unscaled_gp": gp, "d_real": real_l.mean(),
                  "d_fake": fake_l.mean(), "d_mismatch": jnp.mean(mis_l, where=~own),
                  "d_contrastive": contrastive}

  (d_grads, t_grads), metrics = jax.grad(d_terms, argnums=(0, 1), has_aux=True)(
      state.d_params, state.text_params)
  adam = lambda lr: optax.adam(lr, b1=t.b1, b2=t.b2)
  d_updates, d_opt = adam(t.lr_d).update(d_grads, state.d_opt_state)
  d_new = optax.apply_updates(state.d_params, d_updates)
  t_updates, t_opt = adam(t.lr_text).update(t_grads, state.text_opt_state)

  def g_terms(g):  # through the updated D
    feats = d_apply(d_new, augment(generate(g), k_g), m="features")
    adversarial = -jnp.mean(d_apply(d_new, feats, sent0, m="logits"))
    if not cfg.loss.contrastive_g:
      return adversarial, {"g_adversarial": adversarial}
    contrastive = _info_nce(d_apply(d_new, feats, m="image_embedding"),
                            d_apply(d_new, sent0, m="text_embedding"), temperature)
    return adversarial + w * contrastive, {"g_adversarial": adversarial,
                                           "g_contrastive": contrastive}

  g_grads, g_metrics = jax.grad(g_terms, has_aux=True)(state.g_params)
  g_updates, g_opt = adam(t.lr_g).update(g_grads, state.g_opt_state)
  g_new = optax.apply_updates(state.g_params, g_updates)
  decay = min(t.ema_decay, (1 + STEP) / (10 + STEP))  # the warm-up: 5/14 at step 4
  ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, g_new)
  new = {"d_params": d_new, "g_params": g_new, "ema_params": ema,
         "text_params": optax.apply_updates(state.text_params, t_updates),
         "d_opt_state": d_opt, "g_opt_state": g_opt, "text_opt_state": t_opt}
  return new, {"d": d_grads, "g": g_grads, "text": t_grads}, {**metrics, **g_metrics}


def _norm(tree) -> float:
  return np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree)))


def _rel_error(got, want) -> float:
  assert jax.tree.structure(got) == jax.tree.structure(want)
  return _norm(jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, got, want)) / _norm(want)


@pytest.fixture(scope="module", params=["ma_gp", "r1_augmented"])
def stepped(tmp_path_factory, request):
  config = _config(tmp_path_factory.mktemp("unused"), request.param)
  tokenizer, t5_config, _ = build_text(config)
  models = build_models(config, t5_config)
  state, batch = _host_state(models), _batch(config, tokenizer)
  keys = np.where(batch["attention_mask"] > 0, batch["input_ids"], -1)
  own = np.all(keys == np.roll(keys, 1, axis=0), axis=-1)
  assert 0 < own.sum() < len(own), "the batch should repeat some neighbours' captions, not all"
  step = jax.jit(functools.partial(train_step, models))
  new_state, metrics = step(state, batch)
  odd = step(state.replace(step=np.int32(STEP + 1)), batch)  # no penalty; the EMA at its cap
  want, grads, want_metrics = jax.jit(functools.partial(_reference_step, models))(state, batch)
  return (config, state, *jax.device_get((new_state, metrics, odd, want, grads, want_metrics)))


def test_losses_and_lazy_penalty_equal_the_reference(stepped):
  config, _, new_state, metrics, (_, odd_metrics), _, _, want = stepped
  assert metrics["finite"] == 1.0 and int(new_state.step) == STEP + 1
  terms = ["d_loss", "d_hinge", "d_real", "d_fake", "d_mismatch", "d_contrastive",
           "g_adversarial"]
  for k in terms + ["g_contrastive"] * config.loss.contrastive_g:
    np.testing.assert_allclose(metrics[k], want[k], rtol=TOL, atol=ATOL, err_msg=k)
  # The lazy penalty at a multiple of gp_every: gp_every x it is a part of D's loss; the metric
  # is the penalty itself (as with gp_every=1), 0 and unmeasured at the other steps.
  np.testing.assert_allclose(metrics["gp"], want["unscaled_gp"], rtol=TOL)
  assert config.loss.gp_every * metrics["gp"] > 1e-3 * metrics["d_loss"]  # not negligible
  w = config.loss.contrastive_weight
  g_contrastive = want["g_contrastive"] if config.loss.contrastive_g else 0.0
  assert ("g_contrastive" in metrics) == config.loss.contrastive_g
  np.testing.assert_allclose(metrics["g_loss"], want["g_adversarial"] + w * g_contrastive,
                             rtol=TOL, atol=ATOL)
  # One step later: no penalty at all, and no value for it.
  assert (metrics["gp_measured"], odd_metrics["gp_measured"], odd_metrics["gp"]) == (1.0, 0.0, 0.0)
  np.testing.assert_allclose(odd_metrics["d_loss"],
                             odd_metrics["d_hinge"] + w * odd_metrics["d_contrastive"], rtol=1e-6)


def test_the_ema_is_capped_at_train_ema_decay(stepped):
  """At STEP + 1 the warm-up (6/15) passes train.ema_decay (0.38): the EMA takes 0.38."""
  config, state, _, _, (odd_state, _), _, _, _ = stepped
  decay = config.train.ema_decay
  assert decay < (2 + STEP) / (11 + STEP)
  want = jax.tree.map(lambda e, g: decay * e + (1 - decay) * g, state.ema_params,
                      odd_state.g_params)
  assert _rel_error(odd_state.ema_params, want) <= TOL


def test_updates_equal_the_reference(stepped):
  _, state, new_state, metrics, _, want, grads, _ = stepped
  for name in ("d_params", "g_params", "text_params", "ema_params"):
    assert _rel_error(getattr(new_state, name), want[name]) <= TOL, name
    # The update moved every tree (by far more than the tolerance).
    assert _rel_error(getattr(state, name), want[name]) > 10 * TOL, name
  for name in ("d_opt_state", "g_opt_state", "text_opt_state"):
    got, ref = getattr(new_state, name), want[name]
    assert optax.tree.get(got, "count") == optax.tree.get(ref, "count") == 4
    for field in ADAM_FIELDS:  # mu: with b1 = 0, the gradient itself
      assert _rel_error(optax.tree.get(got, field), optax.tree.get(ref, field)) <= TOL, (name,
                                                                                         field)
  for name in ("d", "g", "text"):
    np.testing.assert_allclose(metrics[f"grad_norm_{name}"], _norm(grads[name]),
                               rtol=TOL)


def test_real_and_fake_images_get_their_own_augmentation_keys(monkeypatch, tmp_path):
  """DiffAugment's keys: the step key split four ways, [1] for the real images, [2] for the fakes
  D learns from and [3] for the fakes G's loss sees; traced with a stand-in DiffAugment that
  records them (only the keys are computed)."""
  config = _config(tmp_path)
  config.loss.diffaugment = "color,translation,cutout"
  tokenizer, t5_config, _ = build_text(config)
  models = build_models(config, t5_config)
  keys = []

  def record(x, key, policy):
    assert policy == config.loss.diffaugment
    keys.append(key)
    return x

  monkeypatch.setattr(gan, "diff_augment", record)

  def step_keys(state, batch):
    keys.clear()
    train_step(models, state, batch)
    return jnp.stack(keys)

  state = _host_state(models)
  got = np.asarray(jax.jit(step_keys)(state, _batch(config, tokenizer)))
  want = jax.random.split(jax.random.fold_in(state.rng, STEP), 4)[1:]
  np.testing.assert_array_equal(got, want)
  assert len({k.tobytes() for k in got}) == 3
