"""evaluate.py --write_stats: an existing statistics file is never replaced unasked; the image
size it records is checked against the run scored."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.data.utils import captioned_images
from tests.eval.utils import _main, _MeanStdFeatures, _stand_in_inception


def _write_stats(monkeypatch, tmp_path, folder: Path, *flags: str,
                 out: Path | None = None) -> int | str | None:
  """evaluate.py --write_stats `out` (tmp_path/ref.npz) of `folder`'s images, by a workdir's
  config (--config.data.folder could be parsed once per process only): _main's exit code (a
  one-line error), or None."""
  from llmimg_jax.train.config import base_config
  _stand_in_inception(monkeypatch)
  config = base_config()
  config.data.name, config.data.folder, config.data.image_size = "captioned_folder", str(folder), 8
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(config.to_json())
  return _main("--write_stats", str(out or tmp_path / "ref.npz"), "--workdir", str(workdir),
               "--data_dir", str(tmp_path / "tfds"), "--inception_weights", "inception.pth",
               "--num_samples", "4", *flags)


def test_an_existing_stats_file_is_refused_before_the_work(tmp_path, monkeypatch):
  """It was replaced silently, e.g. DF-GAN's downloaded COCO statistics by a folder's."""
  (tmp_path / "ref.npz").write_bytes(b"DF-GAN's statistics")
  assert _write_stats(monkeypatch, tmp_path, captioned_images(tmp_path, 4)) == (
      f"evaluate.py: error: --write_stats '{tmp_path / 'ref.npz'}' exists; remove it, name a new "
      "file, or pass --overwrite_stats to replace it.")
  assert (tmp_path / "ref.npz").read_bytes() == b"DF-GAN's statistics"
  assert _MeanStdFeatures.made == 0  # refused before the weights and the data were read


def test_overwrite_stats_replaces_the_file(tmp_path, monkeypatch):
  (tmp_path / "ref.npz").write_bytes(b"old statistics")
  folder = captioned_images(tmp_path, 4)
  assert _write_stats(monkeypatch, tmp_path, folder, "--overwrite_stats") is None
  with np.load(tmp_path / "ref.npz") as stats:
    assert stats["mu"].shape == (6,) and int(stats["num_images"]) == 4


@pytest.mark.parametrize("meanwhile", ["folder removed", "file written"])
def test_statistics_are_kept_where_their_file_cannot_be_written_after_the_work(
    tmp_path, monkeypatch, spare, meanwhile):
  """--write_stats is checked before the work (Inception features of every image: minutes to
  hours), but a write that failed after it (its folder removed meanwhile, a full disk; a file
  written there meanwhile, kept unless --overwrite_stats) lost the statistics, where evaluate.py's
  and run.py's results are kept. They now go to a spare stats_*.npz, which the error names."""
  from llmimg_jax.eval import fid
  out = tmp_path / "stats" / "ref.npz"
  statistics = fid.statistics

  def statistics_meanwhile(features):
    if meanwhile == "folder removed":
      shutil.rmtree(out.parent)
    else:
      out.write_bytes(b"another's statistics")
    return statistics(features)

  monkeypatch.setattr(fid, "statistics", statistics_meanwhile)
  error = _write_stats(monkeypatch, tmp_path, captioned_images(tmp_path, 4), out=out)
  [saved] = spare.glob("stats_*.npz")
  why = ("FileNotFoundError: No such file or directory" if meanwhile == "folder removed" else
         "FileExistsError: a file was written there while the statistics were computed")
  assert error == (f"evaluate.py: error: could not write --write_stats '{out}' ({why}); the "
                   f"statistics are in {saved}.")
  with np.load(saved) as stats:
    assert stats["mu"].shape == (6,) and int(stats["num_images"]) == 4
  assert (out.read_bytes() == b"another's statistics" if meanwhile == "file written"
          else not out.parent.exists())


def test_stats_of_another_image_size_than_the_run_are_refused_before_sampling(tmp_path,
                                                                             monkeypatch):
  """Statistics of 64px real images scored a 32px run without a word (an FID of the resolution
  gap): --write_stats records the size, and evaluate_run refuses another before it samples."""
  import ml_collections
  from llmimg_jax.eval import report
  from llmimg_jax.sample import Sampler
  folder = captioned_images(tmp_path, 4)
  assert _write_stats(monkeypatch, tmp_path, folder) is None  # the run's data.image_size: 8
  with np.load(tmp_path / "ref.npz") as stats:
    assert int(stats["image_size"]) == 8
  config = ml_collections.ConfigDict({"data": {"name": "captioned_folder", "folder": str(folder),
                                               "image_size": 16}})
  monkeypatch.setattr(Sampler, "from_workdir", lambda *a: type("S", (), {"config": config})())
  with pytest.raises(ValueError, match=(
      rf"--ref_stats {tmp_path / 'ref.npz'} holds statistics of 8px real images, but the run "
      r"generates 16px ones; write them at its size with `python evaluate.py --write_stats "
      r"PATH --workdir WORKDIR")):
    report.evaluate_run(str(tmp_path / "run"), inception_weights="inception.pth",
                        ref_stats=str(tmp_path / "ref.npz"))
  assert _MeanStdFeatures.made == 1  # by --write_stats alone: refused before the weights were read
  np.savez(tmp_path / "dfgan.npz", mu=np.zeros(3), sigma=np.eye(3))  # no size: not checked
  report.check_ref_size(str(tmp_path / "dfgan.npz"), 16)
  # int()'s "invalid literal for int() with base 10: 'abc'" named no file.
  for size in ("abc", 64.9, np.inf):  # an int() error naming no file; 64; OverflowError
    np.savez(tmp_path / "odd.npz", mu=np.zeros(3), sigma=np.eye(3), image_size=size)
    with pytest.raises(ValueError, match=(
        rf"^--ref_stats {tmp_path / 'odd.npz'} records image_size {size!r}, which is no size in "
        r"pixels; write the statistics again with `python evaluate.py --write_stats PATH")):
      report.check_ref_size(str(tmp_path / "odd.npz"), 16)


def test_stats_of_another_dataset_than_the_run_are_warned_about(tmp_path, monkeypatch, caplog):
  """--ref_stats of another dataset (recorded by --write_stats) scored the run without a word:
  allowed (e.g. a folder run against COCO's statistics), but said."""
  from llmimg_jax.eval import report
  assert _write_stats(monkeypatch, tmp_path, captioned_images(tmp_path, 4)) is None
  recorded = str(np.load(tmp_path / "ref.npz")["dataset"])
  assert recorded.startswith("captioned_folder:")
  caplog.clear()
  with caplog.at_level("WARNING"):
    report.check_ref_size(str(tmp_path / "ref.npz"), 8, recorded)
  assert "--ref_stats" not in caplog.text
  with caplog.at_level("WARNING"):
    report.check_ref_size(str(tmp_path / "ref.npz"), 8, "captioned_shapes/tiny_32")
  assert (f"--ref_stats {tmp_path / 'ref.npz'} holds statistics of {recorded}, not of the run's "
          "captioned_shapes/tiny_32: its FID measures the distance to that data") in caplog.text


@pytest.mark.parametrize("workdir", ["missing", "a_file", "cut_short", "a_model", "checkpoints"])
def test_a_workdir_without_a_readable_config_is_one_error_naming_it(tmp_path, monkeypatch,
                                                                     workdir):
  """--write_stats --workdir of no run printed Python's "[Errno 2] No such file or directory:
  '.../config.json'" (or a JSON decoder's message), naming neither the flag nor the fix."""
  _stand_in_inception(monkeypatch)
  (tmp_path / "a_file").write_text("not a run")
  (tmp_path / "checkpoints").write_text("a file by a run's checkpoints/ name")
  (tmp_path / "cut_short").mkdir()
  (tmp_path / "cut_short" / "config.json").write_text('{"data": {"name": "capt')
  (tmp_path / "a_model").mkdir()  # a Hugging Face model's folder: an AttributeError traceback
  (tmp_path / "a_model" / "config.json").write_text('{"model_type": "t5", "d_model": 512}')
  error = _main("--write_stats", str(tmp_path / "ref.npz"), "--workdir", str(tmp_path / workdir),
                "--inception_weights", "inception.pth")
  assert str(error).startswith(
      f"evaluate.py: error: --workdir {tmp_path / workdir}: cannot read the run's config "
      f"{tmp_path / workdir / 'config.json'} (")
  assert str(error).endswith("); pass the --workdir of a train.py run, or --config with a config "
                             "file.")
  assert _MeanStdFeatures.made == 0 and not (tmp_path / "ref.npz").exists()


def test_a_workdir_inside_a_runs_checkpoints_names_the_run_to_pass(run, tmp_path, monkeypatch):
  """--write_stats --workdir RUN/checkpoints/2 (or a folder in it) said it cannot read
  RUN/checkpoints/2/config.json, where sample.py and the evaluation name the run's --workdir
  (restore.refuse_checkpoint_folder); without --step, which --write_stats refuses."""
  _stand_in_inception(monkeypatch)
  ckpt = run.workdir / "checkpoints"
  for inside in (ckpt, ckpt / "2", ckpt / "2" / "state"):
    error = _main("--write_stats", str(tmp_path / "ref.npz"), "--workdir", str(inside),
                  "--inception_weights", "inception.pth")
    assert error == (f"evaluate.py: error: {inside} is a run's checkpoint folder, not its "
                     f"workdir: pass --workdir {run.workdir}.")
  assert _MeanStdFeatures.made == 0 and not (tmp_path / "ref.npz").exists()


def test_overwrite_stats_without_write_stats_is_refused(tmp_path):
  """--overwrite_stats alone was ignored without a word (the run was evaluated)."""
  from absl import app
  with pytest.raises(app.UsageError, match="^--overwrite_stats only applies with --write_stats"):
    _main("--workdir", str(tmp_path), "--overwrite_stats")


@pytest.mark.parametrize("flags, named", [
    (["--split", "holdout"], "--split only applies"),
    (["--step", "2", "--out", "r.json"], "--step, --out only apply"),
    (["--seed", "1", "--ref_stats", "ref.npz", "--batch_size", "8"],
     "--seed, --ref_stats, --batch_size only apply"),
])
def test_evaluation_flags_with_write_stats_are_refused(tmp_path, flags, named):
  """--write_stats ref.npz --split holdout wrote the test split's statistics without a word (the
  flag for that is --stats_split); --step, --seed, --out, ... were ignored as silently."""
  from absl import app
  with pytest.raises(app.UsageError, match=(
      f"^{named} to the evaluation of a run, not to --write_stats \\(statistics of real images; "
      r"--stats_split names their split\); drop (it|them)\.$")):
    _main("--write_stats", str(tmp_path / "ref.npz"), "--workdir", str(tmp_path),
          "--inception_weights", "inception.pth", *flags)
  assert not (tmp_path / "ref.npz").exists()


def test_a_split_of_one_image_is_refused_naming_the_fix(tmp_path, monkeypatch):
  """One image has no covariance: the error was fid's "Features must be [n >= 2, d]", after the
  weights and the images were read, naming no flag."""
  assert _write_stats(monkeypatch, tmp_path, captioned_images(tmp_path, 1)) == (
      "evaluate.py: error: --write_stats: captioned_folder/train has 1 record(s); statistics need "
      "2 or more images: pass the --stats_split of a larger split, or add images.")
  assert not (tmp_path / "ref.npz").exists()
