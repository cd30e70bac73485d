import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmimg_jax.gan import diff_augment
from llmimg_jax.gan.diffaugment import cutout, translate, translation
from tests.gan.utils import fast_key

POLICY = "color,translation,cutout"


def _np_shift(img, dh, dw):
  """Reference: out[i, j] = img[i - dh, j - dw], zero outside. img: [height, width, channels]."""
  h, w, _ = img.shape
  out = np.zeros_like(img)
  out[max(dh, 0):h + min(dh, 0), max(dw, 0):w + min(dw, 0)] = \
      img[max(-dh, 0):h - max(dh, 0), max(-dw, 0):w - max(dw, 0)]
  return out


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.uniform(-1.0, 1.0, (4, 32, 32, 3)).astype(np.float32))


# Everything below goes through jit (the policy is static): jittability is part of the contract.
_aug = jax.jit(diff_augment, static_argnames="policy")


def test_deterministic_per_key_and_keys_differ(images):
  a = _aug(images, fast_key(1))
  b = _aug(images, fast_key(1))
  c = _aug(images, fast_key(2))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(np.asarray(a), np.asarray(c))
  assert not np.allclose(np.asarray(a), np.asarray(images))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shape_and_dtype_preserved(images, dtype):
  for policy in ("color", "translation", "cutout", POLICY):
    out = jax.eval_shape(functools.partial(diff_augment, policy=policy), images.astype(dtype),
                         jax.random.key(0))
    assert out.shape == images.shape and out.dtype == dtype


def test_empty_policy_is_identity(images):
  assert diff_augment(images, jax.random.key(0), "") is images
  assert diff_augment(images, jax.random.key(0), " , ") is images


def test_uint8_images_or_a_key_first_are_refused(images):
  """uint8 images came back float32 127.5 everywhere ('color': each random factor cast to uint8),
  where the docstring says the dtype is kept; diff_augment(key, x) failed in jax.random with
  'invalid PRNG key data: expected key_data.shape to end with (2,)'."""
  pixels = np.full(images.shape, 128, np.uint8)
  with pytest.raises(ValueError, match=r"takes float images .*; got x uint8 \[4, 32, 32, 3\] "
                     r"\(uint8 images: x / 127\.5 - 1; the key comes second\)"):
    diff_augment(pixels, jax.random.key(0), "color")
  with pytest.raises(ValueError, match=r"got x key<fry> \[\]"):
    diff_augment(jax.random.key(0), images)


def test_unknown_op_raises(images):
  with pytest.raises(ValueError, match="allowed: color, translation, cutout"):
    diff_augment(images, jax.random.key(0), "color,flip")


def test_translate_shifts_content():
  x = jnp.zeros((2, 8, 8, 1)).at[:, 2, 3, 0].set(1.0)
  out = np.asarray(translate(x, jnp.array([1, -2]), jnp.array([2, 0])))
  assert out[0, 3, 5, 0] == 1.0 and out[0].sum() == 1.0
  assert out[1, 0, 3, 0] == 1.0 and out[1].sum() == 1.0
  # Content pushed past the border is dropped and replaced by zeros.
  gone = np.asarray(translate(x, jnp.array([6, 0]), jnp.array([0, -4])))
  assert gone.sum() == 0.0
  # Padding only by the largest shift gives the same images.
  dh, dw = jnp.array([2, -2]), jnp.array([-1, 2])
  np.testing.assert_array_equal(translate(x, dh, dw, max_shift=(2, 2)), translate(x, dh, dw))


def test_random_translation_is_a_bounded_shift_with_zero_padding(images):
  x = np.asarray(images) + 2.0  # strictly positive, so zero padding is recognisable
  out = np.asarray(jax.jit(translation)(jnp.asarray(x), fast_key(5)))
  shifts = []
  for i in range(x.shape[0]):
    found = [(dh, dw) for dh in range(-4, 5) for dw in range(-4, 5)
             if np.array_equal(out[i], _np_shift(x[i], dh, dw))]
    assert len(found) == 1, "each image must be exactly one shift of at most 32/8 = 4 pixels"
    shifts.append(found[0])
  assert len(set(shifts)) > 1  # independent per image


def test_translation_draws_every_shift_up_to_an_eighth_evenly(monkeypatch):
  """Shifts in [-4, 4] at 32px, each about as often (DiffAugment's randint(-s, s + 1)): one too
  few leaned every shift up and left."""
  from llmimg_jax.gan import diffaugment
  monkeypatch.setattr(diffaugment, "translate", lambda x, dh, dw, max_shift: (dh, dw, max_shift))
  dh, dw, max_shift = translation(jnp.zeros((4096, 32, 32, 1)), fast_key(8))
  assert max_shift == (4, 4)
  for shifts in (np.asarray(dh), np.asarray(dw)):
    counts = np.bincount(shifts + 4, minlength=9)
    assert len(counts) == 9 and counts.min() > 4096 / 9 * 0.8, counts


def test_each_op_draws_from_its_own_key(images):
  """The policy's ops take the key's splits in order: one key for all tied cutout's position to
  translation's shift."""
  key = fast_key(3)
  k_translation, k_cutout = jax.random.split(key)
  np.testing.assert_array_equal(
      np.asarray(_aug(images, key, policy="translation,cutout")),
      np.asarray(jax.jit(lambda x: cutout(translation(x, k_translation), k_cutout))(images)))


def test_cutout_zeroes_one_square(images):
  x = images + 2.0
  out = np.asarray(jax.jit(cutout)(x, fast_key(6)))
  for i in range(x.shape[0]):
    zero = out[i, :, :, 0] == 0
    assert np.all((out[i] == 0) == zero[..., None])  # same region in every channel
    rows, cols = np.nonzero(zero)
    assert 0 < zero.sum() <= 16 * 16
    # A (possibly border-clipped) rectangle of the 16x16 cutout.
    assert zero.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert rows.max() - rows.min() + 1 <= 16 and cols.max() - cols.min() + 1 <= 16
    np.testing.assert_array_equal(out[i][~zero], np.asarray(x[i])[~zero])


def test_color_changes_values_not_positions(images):
  # Brightness/saturation/contrast never move pixels: a constant grey image stays constant
  # (per image), while the value changes.
  x = images.at[2:].set(0.3)
  out = np.asarray(_aug(x, fast_key(7), policy="color"))
  assert not np.allclose(out[:2], np.asarray(x[:2]))
  assert np.allclose(out[2:], out[2:, :1, :1, :1], atol=1e-6)
  assert not np.allclose(out[2:], 0.3)


def test_color_is_brightness_then_saturation_then_contrast(images, monkeypatch):
  """DiffAugment's rand_brightness, rand_saturation (about each pixel's channel mean) and
  rand_contrast (about each image's mean), in that order, against numpy with known draws."""
  from llmimg_jax.gan import diffaugment
  draws = {"b": np.array([0.1, 0.9, 0.5, 0.3]), "s": np.array([0.2, 0.7, 1.0, 0.0]),
           "c": np.array([0.0, 1.0, 0.25, 0.6])}  # U[0, 1) per image
  order = iter("bsc")
  monkeypatch.setattr(diffaugment, "_uniform", lambda key, b, dtype: jnp.asarray(
      draws[next(order)], dtype)[:, None, None, None])
  out = np.asarray(diffaugment.color(images, jax.random.key(0)))
  x = np.asarray(images, np.float64)
  b, sat, con = (draws[k][:, None, None, None] for k in "bsc")
  x = x + (b - 0.5)
  mean = x.mean(axis=3, keepdims=True)
  x = (x - mean) * (sat * 2) + mean
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  x = (x - mean) * (con + 0.5) + mean
  np.testing.assert_allclose(out, x, atol=1e-5)


def test_differentiable(images):
  grad = jax.jit(jax.grad(lambda x: jnp.sum(diff_augment(x, fast_key(9), POLICY) ** 2)))(images)
  assert grad.shape == images.shape and bool(jnp.all(jnp.isfinite(grad)))
  assert float(jnp.max(jnp.abs(grad))) > 0
