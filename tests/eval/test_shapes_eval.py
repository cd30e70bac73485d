"""The shapes evaluator on a small real build: >= 99% per attribute on the real test split, real
images follow their own captions >= 99% through ShapesEvaluator.score (the code path evaluate.py
and the in-training evaluation use), and noise or other images' captions score near zero.

Build: captioned_shapes/32_small (2,000 train, 200 test, 200 holdout images at 32px); the
evaluator trains on all 2,000 train images (TrainSettings below) into a temp LLMIMG_CACHE_DIR.
"""
import numpy as np
import pytest

from llmimg_jax.data import pipeline
from llmimg_jax.eval import evaluator as ev
from llmimg_jax.eval.shapes_eval import ShapesEvaluator, load_split

SETTINGS = ev.TrainSettings(steps=600, batch_size=32)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  data = pipeline.default_data_config()
  data.data_dir = str(tmp_path_factory.mktemp("tfds_small"))
  data.config = "32_small"
  data.image_size = 32
  data.build_num_proc = 1
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("LLMIMG_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    evaluator = ShapesEvaluator.load_or_train(data, SETTINGS)
  return data, evaluator


def test_evaluator_reads_real_test_images(small):
  data, evaluator = small
  assert evaluator.meta["num_train"] == 2000
  print("test accuracy", evaluator.meta["test"])
  for attribute, accuracy in evaluator.meta["test"].items():
    assert accuracy >= 0.99, (attribute, evaluator.meta["test"])
  holdout = load_split(data, "holdout")  # unseen (shape, colour) pairs
  acc = ev.cell_accuracy(evaluator.read(holdout.images), ev.cell_labels(holdout.gt))
  print("holdout accuracy", acc)
  assert min(acc.values()) >= 0.97, acc


def test_real_images_follow_their_captions_and_noise_does_not(small):
  data, evaluator = small
  test = load_split(data, "test")
  n = len(test.images)
  images = np.repeat(test.images, 3, axis=0)  # every caption of every image
  captions = [c for caps in test.captions for c in caps[:3]]
  real = evaluator.score(images, captions)
  print("real", real)
  assert real["caption_accuracy"] >= 0.99, real
  shuffled = evaluator.score(test.images, [test.captions[(i + 1) % n][0] for i in range(n)])
  noise = evaluator.score(np.random.default_rng(0).integers(0, 256, test.images.shape, np.uint8),
                          [c[0] for c in test.captions])
  print("shuffled", shuffled, "noise", noise)
  assert shuffled["caption_accuracy"] < 0.05 and noise["caption_accuracy"] < 0.02
  assert noise["shape"] < 0.3 and noise["color"] < 0.3  # chance is 1/7 and 1/10 when seen
