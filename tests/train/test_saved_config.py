"""The config a run saves (WORKDIR/config.json, each checkpoint's `config` item) and compares on
resume and across hosts: a key read by one dataset only is not carried for another."""
from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from llmimg_jax.train import checkpoint, resume, same_config
from tests.train.utils import tiny_config

ROOT = Path(__file__).parents[2]


def _folder_config(tmp_path: Path, builder_config: str = "32_small"):
  """A captioned_folder config as the pipeline's defaults (and older versions) left it."""
  config = tiny_config(tmp_path / "tfds")
  config.data.name, config.data.folder = "captioned_folder", str(tmp_path / "images")
  config.data.config = builder_config
  return config


def _config_file(name: str):
  spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("dataset", ["captioned_folder", "coco_captions"])
def test_config_json_of_another_dataset_holds_no_shapes_builder_config(tmp_path, dataset):
  """folder_64 runs saved data.config='32_small', the captioned_shapes builder config default,
  which reads as if the folder run used it."""
  config = _folder_config(tmp_path)
  config.data.name = dataset
  resume.write_config(tmp_path, config)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["data"]["config"] is None
  assert saved["data"]["name"] == dataset
  assert saved["model"] == json.loads(config.to_json())["model"]


def test_the_folder_config_files_run_saves_no_shapes_builder_config(tmp_path):
  resume.write_config(tmp_path, _config_file("folder_64"))
  assert json.loads((tmp_path / "config.json").read_text())["data"]["config"] is None


def test_a_shapes_run_still_saves_its_builder_config(tmp_path):
  resume.write_config(tmp_path, tiny_config(tmp_path))
  assert json.loads((tmp_path / "config.json").read_text())["data"]["config"] == "tiny_32"


def test_a_folder_runs_checkpoint_config_holds_no_shapes_builder_config(tmp_path):
  config = _folder_config(tmp_path)
  manager = checkpoint.make_manager(tmp_path, config)
  checkpoint.save(manager, 2, {"w": np.zeros(3, np.float32)}, None, config)
  manager.wait_until_finished()
  manager.close()
  saved = checkpoint.saved_config(tmp_path / "checkpoints" / "2")
  assert saved["data"]["config"] is None and saved["data"]["name"] == "captioned_folder"


def test_resuming_a_folder_run_whose_config_json_holds_32_small_is_no_change(tmp_path, caplog):
  """A run saved by an earlier version holds '32_small': resumed, its config is the same."""
  old = _folder_config(tmp_path)
  (tmp_path / "config.json").write_text(old.to_json(indent=2))
  new = _folder_config(tmp_path, builder_config=None)
  with caplog.at_level(logging.WARNING):
    resume.write_config(tmp_path, new)
  assert "differs" not in caplog.text
  assert checkpoint.config_changes(json.loads(old.to_json()), json.loads(new.to_json())) == []
  # Hosts of one run compare their settings the same way (same_config.check_same_config).
  assert checkpoint.config_changes(same_config._settings(old, tmp_path),
                                   same_config._settings(new, tmp_path)) == []


def _saved_by_an_earlier_version(tmp_path: Path, config) -> ocp.CheckpointManager:
  """Step 2 of a folder run saved with its config item as it was (data.config='32_small')."""
  manager = checkpoint.make_manager(tmp_path, config)
  manager.save(2, args=ocp.args.Composite(
      state=ocp.args.StandardSave({"w": np.arange(3, dtype=np.float32)}),
      config=ocp.args.JsonSave(json.loads(config.to_json()))), force=True)
  manager.wait_until_finished()
  return manager


def test_a_folder_run_saved_with_32_small_resumes(tmp_path):
  config = _folder_config(tmp_path)
  manager = _saved_by_an_earlier_version(tmp_path, config)
  abstract = {"w": jax.ShapeDtypeStruct((3,), np.float32)}
  restored = checkpoint.restore_latest(manager, abstract, config=_folder_config(tmp_path, None))
  np.testing.assert_array_equal(restored["w"], np.arange(3))


def test_a_config_mismatch_does_not_blame_the_shapes_builder_config(tmp_path):
  manager = _saved_by_an_earlier_version(tmp_path, _folder_config(tmp_path))
  config = _folder_config(tmp_path, None)
  config.model.nf_g = 16
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = {"w": jax.ShapeDtypeStruct((4,), np.float32, sharding=one_device)}  # as nf_g=16
  with pytest.raises(checkpoint.ConfigMismatchError, match=r"model\.nf_g: 8 -> 16") as error:
    checkpoint.restore_latest(manager, abstract, config=config)
  assert "data.config" not in str(error.value)


def test_only_a_change_of_the_key_train_steps_says_the_run_continues(tmp_path, caplog):
  """A steps-only change was told by the text before the first ':' of each change: a key holding
  one ('steps: note', written into config.json by hand) read as train.steps, and the change to it
  was an info line, not the warning every other change gets."""
  config = tiny_config(tmp_path)
  saved = json.loads(config.to_json())
  saved["train"]["steps: note"] = "to 30 next"
  (tmp_path / "config.json").write_text(json.dumps(saved))
  with caplog.at_level(logging.INFO, logger=resume.__name__):
    resume.write_config(tmp_path, config)
  assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
      ("WARNING", f"{tmp_path / 'config.json'} differs from this run's config (train.steps: note: "
                  "'to 30 next' -> '(none)'); the new config is used and saved.")]


def test_a_run_saves_its_data_paths_in_full(tmp_path, monkeypatch):
  """--config.data.folder=my_images/ (the README's) and a relative data_dir were saved as typed:
  evaluate.py, run from another directory, read whatever folder and build that path named there
  (a build of another folder, scored without a word)."""
  from PIL import Image

  from llmimg_jax.data.pipeline import dataset_id, is_built
  from llmimg_jax.train import loop
  launch = tmp_path / "launch"
  (launch / "my_images").mkdir(parents=True)
  for i, colour in enumerate(["red", "blue", "green", "white"]):
    Image.new("RGB", (32, 32), colour).save(launch / "my_images" / f"{i}.png")
  (launch / "my_images" / "captions.jsonl").write_text(
      "".join(json.dumps({"file": f"{i}.png", "caption": f"image {i}"}) + "\n" for i in range(4)))
  config = tiny_config("tfds")
  config.data.name, config.data.config, config.data.folder = "captioned_folder", "", "my_images/"
  runs = []
  monkeypatch.setattr(loop, "_train_steps", lambda run, *args: runs.append(run))  # no compile
  monkeypatch.chdir(launch)
  loop.train(config, "run")
  assert (config.data.folder, config.data.data_dir) == ("my_images/", "tfds")  # the caller's
  saved = json.loads((launch / "run" / "config.json").read_text())["data"]
  assert (saved["folder"], saved["data_dir"]) == (str(launch / "my_images"), str(launch / "tfds"))
  in_run = runs[0].config.data  # what each checkpoint saves, and the in-training evaluation reads
  assert (in_run.folder, in_run.data_dir) == (saved["folder"], saved["data_dir"])
  built_from = dataset_id(config.data)
  (tmp_path / "elsewhere" / "my_images").mkdir(parents=True)  # another folder of that name
  monkeypatch.chdir(tmp_path / "elsewhere")
  assert dataset_id(in_run) == built_from and is_built(in_run)  # the run's own build


def test_a_data_dir_of_none_reads_and_saves_the_default_one(tmp_path, monkeypatch):
  """validate() lets data.data_dir=None mean the default, $LLMIMG_DATA_DIR or $TFDS_DATA_DIR
  first; it read ~/tensorflow_datasets (a second build beside theirs), saved as null, which
  sample.py and evaluate.py then read under their own $HOME."""
  from llmimg_jax.data import pipeline
  config = tiny_config(tmp_path / "tfds")
  config.data.data_dir = None
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.delenv("LLMIMG_DATA_DIR", raising=False)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  assert pipeline.paths_in_full(config.data).data_dir == str(tmp_path / "tfds")
  monkeypatch.setenv("LLMIMG_DATA_DIR", "shared")
  monkeypatch.chdir(tmp_path)
  assert pipeline.paths_in_full(config.data).data_dir == str(tmp_path / "shared")
  monkeypatch.setenv("LLMIMG_DATA_DIR", "gs://bucket/tfds")
  assert pipeline.paths_in_full(config.data).data_dir == "gs://bucket/tfds"
  assert config.data.data_dir is None  # the caller's as given
