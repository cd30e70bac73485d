"""evaluate.py's results: strict JSON files named by what they hold, the Inception rows of a
captioned_shapes run, and clear errors."""
import hashlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from llmimg_jax.eval import fid
from llmimg_jax.eval.report import evaluate_run, format_table, to_json
from tests.eval.utils import ROOT, _MeanStdFeatures, _stand_in_inception


def test_results_are_strict_json_with_nan_as_null():
  text = to_json({"splits": {"test": {"size": float("nan"), "acc": [0.5, float("inf")]}}})
  parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
  assert parsed == {"splits": {"test": {"size": None, "acc": [0.5, None]}}}


def test_numpy_scalars_in_results_are_written_as_json_numbers():
  """evaluate_run(seed=np.int64(3)) keeps the numpy int in its results, and writing them failed
  with "Object of type int64 is not JSON serializable", after all the evaluation."""
  text = to_json({"seed": np.int64(3), "step": np.int32(7),
                  "splits": {"test": {"acc": np.float32(0.5), "fid": np.float64("nan")}}})
  assert json.loads(text) == {"seed": 3, "step": 7, "splits": {"test": {"acc": 0.5, "fid": None}}}


def test_inception_rows_and_the_floor_of_ref_stats_from_the_scored_split(
    run, sampler, tiny_eval, tmp_path, monkeypatch):
  """--ref_stats written by `--write_stats --stats_split test` hold the very records the floor
  compares: that floor (~0) is omitted; stats of another split keep it."""
  from llmimg_jax.data.pipeline import dataset_id
  from llmimg_jax.eval.generate import generate_for_captions
  from llmimg_jax.eval.shapes_eval import load_split
  data, _ = tiny_eval
  _stand_in_inception(monkeypatch)
  features = _MeanStdFeatures("inception.pth")
  real = load_split(data, "test", 8).at_size(data.image_size)
  mu, sigma = fid.statistics(features(real.images))
  rows = {}
  for split in ("test", "train"):
    path = tmp_path / f"{split}.npz"
    fid.save_statistics(path, mu, sigma, num_images=8, dataset=dataset_id(data), split=split)
    results = evaluate_run(str(run.workdir), splits=["test"], num_samples=8, batch_size=8,
                           data_dir=data.data_dir, inception_weights="inception.pth",
                           ref_stats=str(path))
    rows[split] = results["splits"]["test"]
    # The results name what their Inception FIDs are of: the weights and the statistics file.
    assert results["inception_weights"] == _MeanStdFeatures.source
    assert results["ref_stats"] == {
        "path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "num_images": 8, "dataset": dataset_id(data), "split": split}
  images = generate_for_captions(sampler.models, sampler.ema_params, sampler.text_params,
                                 sampler.tokenizer, [c[0] for c in real.captions], 0, 8)
  expected = fid.frechet_distance(*fid.statistics(features(images)), mu, sigma)
  for r in rows.values():
    np.testing.assert_allclose(r["fid_inception"], expected, rtol=1e-6)
  assert rows["test"]["fid_inception_floor"] is None
  assert abs(rows["train"]["fid_inception_floor"]) < 1e-6  # here the same images, by design
  table = format_table({"step": 2, "workdir": "w", "evaluator": {},
                        "splits": {"test": rows["test"]}})
  assert table.splitlines()[-1].split()[-2:] == [f"{expected:.2f}", "n/a"]


def test_cli_names_its_file_by_split_size_and_seed(run, tiny_eval):
  data, _ = tiny_eval
  args = [sys.executable, "evaluate.py", "--workdir", str(run.workdir), "--split", "test",
          "--num_samples", "8", "--batch_size", "8", "--seed", "3", "--data_dir", data.data_dir]
  out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  # TFDS's INFO lines about reading the dataset (six of them) are not printed, as in train.py.
  assert "Load dataset info" not in out.stderr and "Reusing dataset" not in out.stderr
  path = run.workdir / "eval_2_test_n8_seed3.json"
  assert f"Wrote {path}" in out.stdout
  saved = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c))
  assert saved["seed"] == 3 and saved["splits"]["test"]["num_images"] == 8
  assert all(v is None or math.isfinite(v) for v in saved["splits"]["test"]["generated"].values())


def test_pth_weights_without_torch_is_one_clear_error(tmp_path):
  (tmp_path / "torch").mkdir()
  (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('torch blocked')\n")
  (tmp_path / "w.pth").write_bytes(b"")
  out = subprocess.run(
      [sys.executable, "evaluate.py", "--write_stats", str(tmp_path / "s.npz"),
       "--config", "configs/shapes_quick.py", "--inception_weights", str(tmp_path / "w.pth")],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "PYTHONPATH": str(tmp_path)})
  assert out.returncode == 1
  assert "evaluate.py: error: Reading" in out.stderr and "needs torch" in out.stderr
  assert "Traceback" not in out.stderr


def test_splits_given_as_one_string_or_repeated_are_each_scored_once():
  """evaluate_run(splits="test") was refused as "no split 't', 'e', 's', 't'"; a split repeated
  (`--split test --split test`) was generated and scored twice for one row; the splits in
  --split's order named another results file than the same evaluation's in the default order."""
  from llmimg_jax.eval.report import _check_splits
  available = ["test", "holdout"]
  assert _check_splits("holdout", available, available, "d") == ["holdout"]
  for given in (["test", "holdout", "test"], ["holdout", "test"]):  # the dataset's order
    assert _check_splits(given, available, available, "d") == ["test", "holdout"]
  with pytest.raises(ValueError, match="has no split 'tset'"):
    _check_splits("tset", available, available, "d")


def test_a_bad_seed_is_refused_before_the_run_loads(tmp_path):
  """evaluate_run(seed=2**32) evaluated seed 0's images under the seed given, and seed=2.5 failed
  only once the run, the data and the shapes evaluator were loaded (minutes)."""
  with pytest.raises(ValueError, match=r"seed=4294967296 must be in \[0, 2\*\*32\)"):
    evaluate_run(str(tmp_path / "no_such_run"), seed=2**32)


def test_num_samples_help_states_the_holdout_cap(run, tiny_eval):
  """--num_samples 1500 --split holdout scored 1000 images of a 2000-record holdout, while the
  help said only 'capped by the split's size'."""
  import evaluate
  data, _ = tiny_eval  # tiny_32: 64 holdout records, 32 scored and 32 as the FID reference
  results = evaluate_run(str(run.workdir), splits=["holdout"], num_samples=48,
                         data_dir=data.data_dir, batch_size=16)
  assert results["splits"]["holdout"]["num_images"] == 32
  assert "holdout's by half of it" in evaluate.FLAGS["num_samples"].help


def test_data_paths_a_run_saved_relative_are_named_with_where_they_are_read(tmp_path, monkeypatch,
                                                                             caplog):
  """Runs trained before train.py saved them in full hold data.folder and data.data_dir as typed,
  relative to a directory evaluate.py cannot know."""
  import logging

  import ml_collections

  from llmimg_jax.eval import report
  monkeypatch.chdir(tmp_path)
  data = ml_collections.ConfigDict({"name": "captioned_folder", "folder": "my_images/",
                                    "data_dir": "tfds"})
  with caplog.at_level(logging.WARNING, report.__name__):
    report._warn_relative_paths(data, given_data_dir=False)
    report._warn_relative_paths(data, given_data_dir=True)  # --data_dir: the folder only
    data.folder, data.data_dir = str(tmp_path / "my_images"), "gs://bucket/tfds"
    report._warn_relative_paths(data, given_data_dir=False)  # nothing to say
  folder = (f"The run's config names data.folder='my_images/', relative to the directory "
            f"train.py ran in: it is read as {tmp_path / 'my_images'}. If the run trained "
            "elsewhere, run evaluate.py in the directory train.py ran in.")
  assert caplog.messages == [
      folder, f"The run's config names data.data_dir='tfds', relative to the directory train.py "
              f"ran in: it is read as {tmp_path / 'tfds'}. If the run trained elsewhere, run "
              "evaluate.py in the directory train.py ran in, or pass --data_dir.", folder]
