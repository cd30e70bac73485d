"""benchmarks/data_loader.py's --config and --image_size, checked before any data is read."""
import runpy
import sys
from pathlib import Path

import pytest

from llmimg_jax.data import pipeline

SCRIPT = str(Path(__file__).resolve().parents[2] / "benchmarks" / "data_loader.py")


class _Stop(Exception):
  pass


def _run(monkeypatch, *flags: str) -> dict:
  """The data config the script would load, or SystemExit for a refused flag."""
  seen = {}

  def make_iterator(cfg, *args, **kwargs):
    seen.update(cfg.to_dict())
    raise _Stop  # no dataset build, no loading
  monkeypatch.setattr(pipeline, "make_iterator", make_iterator)
  monkeypatch.setattr(sys, "argv", [SCRIPT, "--data_dir", "/nonexistent", *flags])
  with pytest.raises(_Stop):
    runpy.run_path(SCRIPT, run_name="__main__")
  return seen


def test_image_size_defaults_to_the_configs_resolution(monkeypatch):
  """--config 32 kept the default --image_size 64, and the error named data.image_size."""
  assert _run(monkeypatch, "--config", "32")["image_size"] == 32
  assert _run(monkeypatch)["image_size"] == 64
  assert _run(monkeypatch, "--config", "64", "--image_size", "32")["image_size"] == 32


def test_an_image_size_larger_than_the_config_names_the_flags(monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", [SCRIPT, "--config", "32", "--image_size", "64"])
  with pytest.raises(SystemExit) as e:
    runpy.run_path(SCRIPT, run_name="__main__")
  assert e.value.code == 2
  assert ("--image_size 64: captioned_shapes/32 stores 32px images; drop --image_size or pick a "
          "larger --config.") in capsys.readouterr().err
