"""A build that fails part-way (a full disk) ends prepare in one line naming the path and the
fix, and leaves no build that a later command would read."""
from __future__ import annotations

import os
import types

from PIL import Image
from tensorflow_datasets.core import file_adapters

from tests.data.utils import _usage_error


def _folder(tmp_path, num: int = 6):
  """A folder of `num` captioned 8px images."""
  folder = tmp_path / "imgs"
  folder.mkdir()
  for i in range(num):
    Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / f"{i}.png")
  (folder / "captions.jsonl").write_text(
      "".join(f'{{"file": "{i}.png", "caption": "image {i}"}}\n' for i in range(num)))
  return folder


def _files_under(path) -> list[str]:
  return sorted(os.path.relpath(os.path.join(root, f), path)
                for root, _, files in os.walk(path) for f in files)


def test_a_full_disk_while_writing_the_records_is_one_line_error(tmp_path, capsys, monkeypatch):
  """The array_record writer raises a full disk as a RuntimeError, which ended prepare (and
  train.py) in a traceback."""
  class FullDiskWriter:  # as array_record's, on a 1 MB tmpfs (seen)
    def __init__(self, path, options):
      del options
      self.path = path
      with open(path, "wb") as f:
        f.write(b"\0" * 100)

    def write(self, record):
      del record

    def close(self):
      raise RuntimeError(f"write() failed: No space left on device; writing {self.path}; at "
                         "byte 1044480; Failed to close chunk_writer")
  monkeypatch.setattr(file_adapters, "array_record_module",
                      types.SimpleNamespace(ArrayRecordWriter=FullDiskWriter))
  data_dir = tmp_path / "tfds"
  err = _usage_error(capsys, ["--dataset", "captioned_folder", "--folder", str(_folder(tmp_path)),
                              "--data_dir", str(data_dir), "--image_size", "8"])
  assert f"error: Could not build captioned_folder:{tmp_path / 'imgs'} in " in err, err
  assert ("(RuntimeError: Failed to finalize writing of split \"train\": write() failed: No space "
          "left on device; writing ") in err, err
  assert err.endswith("Check that path, or set --data_dir to a folder you can write, with room "
                      "for the build.\n"), err
  assert "Traceback" not in err
  assert _files_under(data_dir) == []  # TFDS removed its incomplete build, and the lock is gone
