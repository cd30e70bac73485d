"""Shared fixtures: the shapes evaluator of a tiny_32 build, quickly trained once per module into a
temporary LLMIMG_CACHE_DIR."""
import pytest

from llmimg_jax.eval import evaluator as ev
from llmimg_jax.eval.shapes_eval import ShapesEvaluator
from tests.train.conftest import tiny_config


@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory, monkeypatch_module):
  """(data config of a tiny_32 build, cache dir holding its quickly trained evaluator)."""
  data = tiny_config(tmp_path_factory.mktemp("tfds_eval")).data
  data.build_num_proc = 1
  cache = tmp_path_factory.mktemp("cache")
  monkeypatch_module.setenv("LLMIMG_CACHE_DIR", str(cache))
  evaluator = ShapesEvaluator.load_or_train(data, ev.TrainSettings(steps=30, batch_size=16))
  assert set(evaluator.meta["test"]) == {"present", "shape", "color", "size"}
  assert list((cache / "evaluator").glob("captioned_shapes-tiny_32-v1.0.0-32px-*.msgpack"))
  return data, cache


@pytest.fixture(scope="module")
def monkeypatch_module():
  with pytest.MonkeyPatch.context() as mp:
    yield mp
