import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmimg_jax.gan import (d_hinge_loss, g_hinge_loss, gradient_penalty, info_nce, ma_gp,
                            mismatch_weights, mismatched, r1_penalty)


def test_d_hinge_loss_hand_computed():
  real = jnp.array([2.0, 0.5, -1.0])  # relu(1 - r) = [0, 0.5, 2]     mean 5/6
  fake = jnp.array([-2.0, 0.0, 1.0])  # relu(1 + f) = [0, 1, 2]       mean 1
  mis = jnp.array([0.5, -0.5, -3.0])  # relu(1 + m) = [1.5, 0.5, 0]   mean 2/3
  expected = 5 / 6 + 0.5 * (1.0 + 2 / 3)
  np.testing.assert_allclose(float(d_hinge_loss(real, fake, mis)), expected, rtol=1e-6)
  # Swapping the roles must change the value (the mismatch term is only half-weighted).
  assert abs(float(d_hinge_loss(fake, real, mis)) - expected) > 0.1


def test_g_hinge_loss():
  np.testing.assert_allclose(float(g_hinge_loss(jnp.array([1.0, 2.0, -6.0]))), 1.0)
  np.testing.assert_allclose(float(g_hinge_loss(jnp.array([3.0, 5.0]))), -4.0)


def test_mismatched_rolls_by_one():
  s = jnp.arange(8.0).reshape(4, 2)
  np.testing.assert_array_equal(np.asarray(mismatched(s)), [[6, 7], [0, 1], [2, 3], [4, 5]])


def _numpy_info_nce(a, b, t):
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  b = b / np.linalg.norm(b, axis=1, keepdims=True)
  logits = a @ b.T / t
  def ce(lg):
    lse = np.log(np.sum(np.exp(lg - lg.max(1, keepdims=True)), 1)) + lg.max(1)
    return np.mean(lse - np.diag(lg))
  return 0.5 * (ce(logits) + ce(logits.T))


def test_info_nce_matches_numpy():
  info_nce_jit = jax.jit(info_nce, static_argnums=2)
  rng = np.random.default_rng(0)
  a = rng.normal(size=(5, 7)).astype(np.float32)
  b = rng.normal(size=(5, 7)).astype(np.float32) * 3.0  # scale must not matter (cosine)
  for t in (0.07, 0.5):
    np.testing.assert_allclose(float(info_nce_jit(jnp.asarray(a), jnp.asarray(b), t)),
                               _numpy_info_nce(a, b, t), rtol=1e-5)
  # Aligned pairs give a lower loss than random ones.
  aligned = float(info_nce_jit(jnp.asarray(a), jnp.asarray(a), 0.07))
  assert aligned < float(info_nce_jit(jnp.asarray(a), jnp.asarray(b), 0.07))
  # Hand value: two orthogonal perfectly matched pairs, t = 1: CE = log(1 + e^-1) each way.
  e = jnp.eye(2)
  np.testing.assert_allclose(float(info_nce(e, e, 1.0)), np.log(1 + np.exp(-1.0)), rtol=1e-6)


# A per-example nonlinear "discriminator" with closed-form input gradients:
#   D(x_i, s_i) = sum(A * x_i**2) + 0.5 * (s_i . c)**2
#   dD/dx_i = 2 A x_i,   dD/ds_i = (s_i . c) c
def _toy(a, c):
  def logits_fn(x, s):
    return jnp.sum(a * x**2, axis=(1, 2, 3)) + 0.5 * (s @ c) ** 2
  return logits_fn


@pytest.fixture
def toy():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(4, 4, 3)).astype(np.float32)
  c = rng.normal(size=(5,)).astype(np.float32)
  x = rng.normal(size=(3, 4, 4, 3)).astype(np.float32)
  s = rng.normal(size=(3, 5)).astype(np.float32)
  gx2 = np.sum((2 * a * x) ** 2, axis=(1, 2, 3))  # [batch] ||dD/dx_i||^2
  gs2 = (s @ c) ** 2 * np.sum(c**2)  # [batch] ||dD/ds_i||^2
  return a, c, x, s, gx2, gs2


def test_ma_gp_closed_form(toy):
  a, c, x, s, gx2, gs2 = toy
  fn = _toy(jnp.asarray(a), jnp.asarray(c))
  norm = np.sqrt(gx2 + gs2)
  np.testing.assert_allclose(float(ma_gp(fn, x, s)), 2.0 * np.mean(norm**6), rtol=1e-4)
  np.testing.assert_allclose(float(ma_gp(fn, x, s, k=0.5, p=2.0)), 0.5 * np.mean(norm**2),
                             rtol=1e-5)
  np.testing.assert_allclose(float(ma_gp(fn, x, s, k=1.0, p=3.0)), np.mean(norm**3), rtol=1e-5)


def test_ma_gp_is_differentiable_wrt_discriminator_params(toy):
  # k=1, p=2: penalty = mean_i sum(4 A^2 x_i^2) + ... so d/dA = mean_i 8 A x_i^2.
  a, c, x, s, _, _ = toy
  grad = jax.grad(lambda a_: ma_gp(_toy(a_, jnp.asarray(c)), x, s, k=1.0, p=2.0))(jnp.asarray(a))
  np.testing.assert_allclose(np.asarray(grad), np.mean(8 * a * x**2, axis=0), rtol=1e-4)
  # Zero gradient everywhere: the penalty and its derivative are 0, not NaN.
  zero = jax.grad(lambda a_: ma_gp(_toy(a_, jnp.zeros(5)), x * 0, s))(jnp.asarray(a))
  assert np.all(np.asarray(zero) == 0)


def test_r1_closed_form(toy):
  a, c, x, s, gx2, _ = toy
  fn = _toy(jnp.asarray(a), jnp.asarray(c))
  np.testing.assert_allclose(float(r1_penalty(fn, x, s, gamma=10.0)), 5.0 * np.mean(gx2),
                             rtol=1e-5)
  np.testing.assert_allclose(float(r1_penalty(fn, x, s, gamma=1.0)), 0.5 * np.mean(gx2),
                             rtol=1e-5)


def test_gradient_penalty_switch(toy):
  a, c, x, s, gx2, gs2 = toy
  fn = _toy(jnp.asarray(a), jnp.asarray(c))
  np.testing.assert_allclose(float(gradient_penalty("ma_gp", fn, x, s, k=1.0, p=2.0)),
                             np.mean(gx2 + gs2), rtol=1e-5)
  np.testing.assert_allclose(float(gradient_penalty("r1", fn, x, s, gamma=4.0)),
                             2.0 * np.mean(gx2), rtol=1e-5)
  assert float(gradient_penalty("none", fn, x, s)) == 0.0
  with pytest.raises(ValueError, match="allowed: ma_gp, r1, none"):
    gradient_penalty("wgan", fn, x, s)


@pytest.mark.parametrize("penalty", [ma_gp, r1_penalty])
def test_penalties_refuse_uint8_images(toy, penalty):
  """They cast x to float32 before D (for bf16 images), so uint8 images reached D as values in
  0..255, which Discriminator.features refuses as uint8, and were penalised without a word."""
  a, c, x, s, _, _ = toy
  pixels = np.uint8(np.clip((x + 1) * 127.5, 0, 255))
  with pytest.raises(ValueError, match=r"float images D sees .*; got uint8 ones: .*x / 127\.5 - 1"):
    penalty(_toy(jnp.asarray(a), jnp.asarray(c)), pixels, s)


def test_penalties_jit_with_a_closure(toy):
  a, c, x, s, gx2, gs2 = toy

  @jax.jit
  def step(a_, x_, s_):
    fn = _toy(a_, jnp.asarray(c))
    return ma_gp(fn, x_, s_, k=1.0, p=2.0), r1_penalty(fn, x_, s_, gamma=2.0)

  gp, r1 = step(jnp.asarray(a), x, s)
  np.testing.assert_allclose(float(gp), np.mean(gx2 + gs2), rtol=1e-5)
  np.testing.assert_allclose(float(r1), np.mean(gx2), rtol=1e-5)


def test_mismatch_weights_leave_out_a_neighbour_with_the_same_caption():
  # Captions as token ids under their masks: items 1 and 2 say the same; item 3 too (its 9 is
  # padding); item 0 differs from item 3 only where item 3's mask is 0.
  ids = jnp.array([[5, 6, 7], [5, 6, 0], [5, 6, 0], [5, 6, 9]])
  mask = jnp.array([[1, 1, 1], [1, 1, 0], [1, 1, 0], [1, 1, 0]])
  # mismatched pairs item i with item i - 1: (0, 3) differ, (1, 0) differ, (2, 1) and (3, 2) match.
  np.testing.assert_array_equal(np.asarray(mismatch_weights(ids, mask)), [1.0, 1.0, 0.0, 0.0])


def test_d_hinge_loss_mismatch_term_skips_matching_pairs():
  real = jnp.array([2.0, 0.5, -1.0])
  fake = jnp.array([-2.0, 0.0, 1.0])
  mis = jnp.array([0.5, -0.5, -3.0])  # relu(1 + m) = [1.5, 0.5, 0]
  w = jnp.array([1.0, 0.0, 1.0])  # item 1's "mismatched" sentence is its own caption
  expected = 5 / 6 + 0.5 * (1.0 + (1.5 + 0.0) / 2)
  np.testing.assert_allclose(float(d_hinge_loss(real, fake, mis, w)), expected, rtol=1e-6)
  np.testing.assert_allclose(float(d_hinge_loss(real, fake, mis, jnp.ones(3))),
                             float(d_hinge_loss(real, fake, mis)), rtol=1e-6)
  # No real mismatch in the batch: no mismatch term (not a division by zero).
  np.testing.assert_allclose(float(d_hinge_loss(real, fake, mis, jnp.zeros(3))), 5 / 6 + 0.5,
                             rtol=1e-6)
  # The matching pair is not pushed down: its mismatch logit gets no gradient.
  g = jax.grad(lambda m: d_hinge_loss(real, fake, m, w))(mis)
  assert float(g[1]) == 0.0 and float(g[0]) > 0


def test_info_nce_with_repeated_captions_equals_the_multi_positive_loss():
  """Repeated captions have equal text embeddings; InfoNCE's integer labels then give the value
  and gradients of the loss whose targets spread over all items with the caption."""
  rng = np.random.default_rng(0)
  caption = jnp.array([0, 1, 1, 2, 1, 3])  # items 1, 2 and 4 share a caption
  a = jnp.asarray(rng.normal(size=(6, 8)), jnp.float32)
  emb = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)  # per distinct caption
  same = (caption[:, None] == caption[None, :]).astype(jnp.float32)

  def multi_positive(a, e):
    a = a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    b = e[caption] / jnp.linalg.norm(e[caption], axis=-1, keepdims=True)
    logits, targets = a @ b.T / 0.1, same / same.sum(1, keepdims=True)
    return 0.5 * (jnp.mean(-jnp.sum(targets * jax.nn.log_softmax(logits, 1), 1))
                  + jnp.mean(-jnp.sum(targets * jax.nn.log_softmax(logits.T, 1), 1)))

  ours = lambda a, e: info_nce(a, e[caption], 0.1)
  np.testing.assert_allclose(float(ours(a, emb)), float(multi_positive(a, emb)), rtol=1e-5)
  for g, w in zip(jax.grad(ours, (0, 1))(a, emb), jax.grad(multi_positive, (0, 1))(a, emb)):
    np.testing.assert_allclose(g, w, atol=1e-5)
