"""ShapesEvaluator used from Python: its inputs as a notebook passes them."""
import dataclasses
import json
import re

import jax
import numpy as np
import pytest

from llmimg_jax.eval import evaluator as ev
from llmimg_jax.eval.shapes_eval import ShapesEvaluator


@pytest.fixture(scope="module")
def evaluator():
  """Untrained weights: what it reads does not matter here, only how its inputs are taken."""
  images = np.zeros((1, 32, 32, 3), np.uint8)
  return ShapesEvaluator(jax.jit(ev.EvaluatorNet().init)(jax.random.PRNGKey(0), images)["params"],
                         32)


def test_one_str_is_the_caption_of_one_image(evaluator):
  """score(image[None], "a red circle") was refused as '1 images but 12 captions' (its
  characters), where the Sampler and generate_for_captions take one str as one caption."""
  image = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), np.uint8)
  one = evaluator.score(image, "a red circle")
  assert one["num_images"] == 1  # NaN: the sizes, cells and relations it does not state
  assert one == pytest.approx(evaluator.score(image, ["a red circle"]), nan_ok=True)
  with pytest.raises(ValueError, match="2 images but 1 captions"):
    evaluator.score(np.concatenate([image, image]), "a red circle")


def test_captions_are_any_iterable_of_str(evaluator):
  """score(images, generator) failed with 'object of type 'generator' has no len()', where the
  tokenizer and the Sampler take any iterable of texts; a caption that is not a str failed in
  the parser ("'NoneType' object has no attribute 'lower'"), naming neither it nor which one."""
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
  captions = ["a red circle", "a small blue square"]
  assert evaluator.score(images, (c for c in captions)) == pytest.approx(
      evaluator.score(images, captions), nan_ok=True)
  with pytest.raises(ValueError, match="^2 images but 1 captions"):
    evaluator.score(images, iter(captions[:1]))
  with pytest.raises(TypeError, match=r"^Caption 1 is a NoneType, not a str: None$"):
    evaluator.score(images, ["a red circle", None])
  with pytest.raises(TypeError, match=r"^Expected captions as one str or an iterable of str; "
                                      r"got int: 3\.$"):
    evaluator.score(images, 3)


def test_no_images_read_as_no_rows(evaluator):
  """read() and features() of no images (a selection that kept none) failed with IndexError
  ('list index out of range') in apply_batched."""
  one = evaluator.read(np.zeros((1, 32, 32, 3), np.uint8))
  none = evaluator.read(np.zeros((0, 32, 32, 3), np.uint8))
  assert {k: (v.shape[1:], v.dtype) for k, v in none.items()} == {
      k: (v.shape[1:], v.dtype) for k, v in one.items()}
  assert all(len(v) == 0 for v in none.values())
  assert evaluator.features(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0,) + one[
      "features"].shape[1:]


@pytest.mark.filterwarnings("error")
def test_no_images_score_nan_without_a_warning(evaluator):
  """score() of no images gave a NaN caption accuracy with numpy's 'Mean of empty slice'
  RuntimeWarning; as the per-attribute accuracies of statements never made, every accuracy is
  NaN (nothing measured), quietly, and num_images 0."""
  scores = evaluator.score(np.zeros((0, 32, 32, 3), np.uint8), [])
  assert scores.pop("num_images") == 0
  assert set(scores) == {"caption_accuracy", "shape", "color", "size", "cell", "relation",
                         "count"} and all(np.isnan(v) for v in scores.values()), scores


def test_a_batch_size_that_is_not_a_positive_int_is_named(evaluator):
  """apply_batched(batch_size=0) failed with range()'s 'arg 3 must not be zero', -1 with
  'list index out of range', 2.5 with 'float object cannot be interpreted as an integer': named
  with the fix, as InceptionFeatures' (one shared check). numpy ints are batch sizes."""
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)
  for bad in (0, -1, 2.5, True):
    with pytest.raises(ValueError, match=rf"^batch_size={bad} must be an int >= 1 \(images per "
                                         r"call of the network\)\.$"):
      ev.apply_batched(evaluator.net, evaluator.params, images, batch_size=bad)
  two = ev.apply_batched(evaluator.net, evaluator.params, images, batch_size=np.int64(2))
  for k, v in evaluator.read(images).items():
    np.testing.assert_allclose(two[k], v, rtol=1e-5, atol=1e-6)  # batches of 2 and of 3


@pytest.mark.parametrize("kw", [{"batch_size": 0}, {"batch_size": -1}, {"batch_size": 2.5},
                                {"batch_size": True}, {"steps": 0}, {"steps": 10.0}])
def test_train_settings_that_are_not_positive_ints_are_named(kw):
  """TrainSettings(batch_size=0) or -1 trained the evaluator on one empty cell per step (no shape
  or colour seen) and cached it, with only the accuracy warning; 2.5 failed in a slice, steps=0
  in optax ('cosine_decay_schedule requires positive decay_steps')."""
  (name, value), = kw.items()
  with pytest.raises(ValueError, match=rf"^TrainSettings {name}={value!r} must be an int >= 1 "):
    ev.TrainSettings(**kw)


def test_numpy_train_settings_are_kept_as_python_numbers():
  """TrainSettings(steps=np.int64(3), batch_size=np.int32(16)), or np.float32 rates, passed the
  checks and trained, then load_or_train's meta (the settings, as JSON) failed with 'Object of
  type int64 is not JSON serializable', leaving a cached evaluator without it (trained again on
  every use)."""
  settings = ev.TrainSettings(steps=np.int64(3), batch_size=np.int32(16),
                              learning_rate=np.float32(5e-3), label_smoothing=np.float64(0))
  assert (settings.steps, settings.batch_size) == (3, 16)
  assert type(settings.learning_rate) is float and type(settings.label_smoothing) is float
  meta = json.loads(json.dumps(dataclasses.asdict(settings)))
  assert meta["batch_size"] == 16 and meta["learning_rate"] == pytest.approx(5e-3)


def test_a_train_settings_seed_outside_the_key_s_range_is_named():
  """TrainSettings(seed=2**32) initialised the evaluator from seed 0's key (PRNGKey keeps the low
  32 bits) and -1 failed in NumPy's default_rng after the init, naming no field: checked as every
  seed is (check_seed), and kept as an int (the cached evaluator's meta is JSON)."""
  for bad in (2**32, -1):
    with pytest.raises(ValueError,
                       match=rf"^TrainSettings seed={bad} must be in \[0, 2\*\*32\)\.$"):
      ev.TrainSettings(seed=bad)
  with pytest.raises(TypeError, match=r"^TrainSettings seed=2\.5 is a float; pass an int\.$"):
    ev.TrainSettings(seed=2.5)
  with pytest.raises(TypeError, match=r"^TrainSettings seed is a JAX array \(.*: a PRNG key\?\)"):
    ev.TrainSettings(seed=jax.random.PRNGKey(0))
  seed = ev.TrainSettings(seed=np.int64(2**32 - 1)).seed
  assert seed == 2**32 - 1 and type(seed) is int


@pytest.mark.parametrize("kw", [{"learning_rate": -3e-3}, {"learning_rate": 0.0},
                                {"learning_rate": float("nan")}, {"learning_rate": float("inf")},
                                {"learning_rate": "3e-3"},
                                {"label_smoothing": 1.0}, {"label_smoothing": -0.1},
                                {"label_smoothing": True}])
def test_train_settings_rates_out_of_range_are_named(kw):
  """A negative learning rate (ascent), label_smoothing >= 1 (uniform targets) trained nonsense
  and cached it (NumPy rates: test_numpy_train_settings_are_kept_as_python_numbers)."""
  (name, value), = kw.items()
  with pytest.raises(ValueError, match=rf"^TrainSettings {name}={re.escape(repr(value))} must be "):
    ev.TrainSettings(**kw)
