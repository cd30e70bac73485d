"""Shared fixtures: the shapes evaluator of a tiny_32 build, quickly trained (once per session)
into a temporary LLMIMG_CACHE_DIR (each module's copy), a run whose config trains on a
captioned_folder (once per module). (A test's own temporary folder, `spare`: tests/conftest.py.)"""
import json
import shutil

import numpy as np
import pytest

from llmimg_jax.eval import evaluator as ev
from llmimg_jax.eval.shapes_eval import ShapesEvaluator
from tests.sample.utils import save_run
from tests.train.utils import tiny_config


@pytest.fixture(scope="session")
def _trained_evaluator(tmp_path_factory):
  """(data config of a tiny_32 build, the cache its evaluator was trained into): built and
  trained once per test session (xdist worker), then copied into each module's cache."""
  data = tiny_config(tmp_path_factory.mktemp("tfds_eval")).data
  data.build_num_proc = 1
  cache = tmp_path_factory.mktemp("trained_cache")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("LLMIMG_CACHE_DIR", str(cache))
    evaluator = ShapesEvaluator.load_or_train(data, ev.TrainSettings(steps=30, batch_size=16))
  assert set(evaluator.meta["test"]) == {"present", "shape", "color", "size"}
  return data, cache


@pytest.fixture(scope="module")
def tiny_eval(_trained_evaluator, tmp_path_factory, monkeypatch_module):
  """(data config of a tiny_32 build, cache dir holding its quickly trained evaluator): the
  module's own copy of the cache (tests retrain or damage it) and of the data config."""
  data, trained = _trained_evaluator
  cache = tmp_path_factory.mktemp("cache")
  shutil.copytree(trained, cache, dirs_exist_ok=True)
  monkeypatch_module.setenv("LLMIMG_CACHE_DIR", str(cache))
  assert list((cache / "evaluator").glob("captioned_shapes-tiny_32-v1.0.0-32px-*.msgpack"))
  return data.copy_and_resolve_references(), cache


@pytest.fixture(scope="module")
def monkeypatch_module():
  with pytest.MonkeyPatch.context() as mp:
    yield mp


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
  """A run whose config trained on a captioned_folder of 10 images (only a train split)."""
  from PIL import Image
  folder = tmp_path_factory.mktemp("my_images")
  rng = np.random.default_rng(0)
  with open(folder / "captions.jsonl", "w") as f:
    for i in range(10):
      Image.fromarray(rng.integers(0, 255, (40, 48, 3), np.uint8)).save(folder / f"{i}.png")
      f.write(json.dumps({"file": f"{i}.png", "caption": f"picture number {i}"}) + "\n")
  config = tiny_config(tmp_path_factory.mktemp("tfds_folder"))
  config.data.name, config.data.folder = "captioned_folder", str(folder)
  return save_run(tmp_path_factory.mktemp("folder_run"), config)
