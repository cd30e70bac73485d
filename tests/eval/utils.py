"""Helpers shared by the evaluation tests: a stand-in for the Inception network, damaged .npz
files, evaluate.main run under given flags, results for a stand-in evaluation to return, and the
in-training evaluation's config and state."""
import contextlib
import io
from pathlib import Path

import numpy as np

from tests.train.utils import tiny_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "shapes_quick.py"


class _MeanStdFeatures:
  """Stands in for InceptionFeatures: [n, 6] per-channel means and standard deviations."""
  dim = 6
  source = {"path": "inception.pth", "sha256": "stand-in"}  # InceptionFeatures.source
  made = 0  # instances, i.e. weights loads

  def __init__(self, weights):
    assert weights == "inception.pth"
    _MeanStdFeatures.made += 1

  def __call__(self, images):
    x = images.reshape(len(images), -1, 3).astype(np.float64)
    return np.concatenate([x.mean(1), x.std(1)], axis=1)


def _stand_in_inception(monkeypatch) -> None:
  """inception.InceptionFeatures is _MeanStdFeatures for this test, none of them made yet."""
  from llmimg_jax.eval import inception
  monkeypatch.setattr(inception, "InceptionFeatures", _MeanStdFeatures)
  _MeanStdFeatures.made = 0


def _damaged_npz_files(tmp_path, good: dict) -> list:
  """A cut-short .npz, a text file and an .npy, each named .npz."""
  np.savez(tmp_path / "whole.npz", **good)
  data = (tmp_path / "whole.npz").read_bytes()
  (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])
  (tmp_path / "text.npz").write_text("mu,sigma\n1,2\n")
  with open(tmp_path / "array.npz", "wb") as f:
    np.save(f, np.zeros(3))
  return [tmp_path / n for n in ("cut.npz", "text.npz", "array.npz")]


def _main(*args: str) -> str | None:
  """evaluate.main under these flags: the one 'evaluate.py: error: ...' line it printed before
  exiting with status 1, or None."""
  import evaluate
  stderr = io.StringIO()
  try:  # a flag error too: the flags parsed before it are not left set for the next test
    evaluate.FLAGS(["evaluate.py", *args])
    with contextlib.redirect_stderr(stderr):
      evaluate.main([])
  except SystemExit as e:
    errors = [line for line in stderr.getvalue().splitlines()
              if line.startswith("evaluate.py: error: ")]
    assert e.code == 1 and len(errors) == 1, (e.code, stderr.getvalue())
    return errors[0]
  finally:
    evaluate.FLAGS.unparse_flags()
  return None


def _eval_config(data_dir):
  """tiny_config of the tiny_32 build in `data_dir`, evaluating 8 captions every 2 steps."""
  config = tiny_config(data_dir)
  config.eval.every, config.eval.num_samples = 2, 8
  return config


def _to_evaluate(sampler, tiny_eval) -> tuple[type, object]:
  """(a state of the sampler's EMA weights, _eval_config of the tiny_eval fixture's build)."""
  data, _ = tiny_eval

  class State:
    ema_params, text_params = sampler.ema_params, sampler.text_params

  return State, _eval_config(data.data_dir)


def _results(workdir) -> dict:
  """evaluate_run's results of a run in `workdir`, for a stand-in evaluation to return: step 3,
  seed 0, an Inception FID of 5 test images."""
  return {"workdir": str(workdir), "step": 3, "seed": 0, "dataset": "d", "splits": {"test": {
      "num_images": 5, "fid_inception": 1.0, "reference": "5 real test images"}}}
