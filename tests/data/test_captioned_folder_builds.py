"""captioned_folder builds through the data pipeline: a folder edited (or gone) after its build
keeps it, the config is validated before any build, each image size is its own build, a symlink
loop is walked once, and a first build leaves no TFDS warning or temp folder."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
import threading

import numpy as np
import pytest
from PIL import Image

from llmimg_jax.data import captioned_folder, captioned_shapes, pipeline
from llmimg_jax.data import images as images_lib


def test_an_edited_folder_keeps_its_build_with_a_warning(tmp_path, caplog):
  """A run resumes on the build it started with; an edit is reported, and deleting the build (the
  warning's `rm -r`) rebuilds it with the new contents. Odd entries (a dangling symlink, a
  non-UTF-8 name, a TFDS data_dir inside the folder) neither crash the fingerprint nor change it
  between loads."""
  folder = tmp_path / "imgs"
  folder.mkdir()
  Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "a.png")
  (folder / "captions.jsonl").write_text('{"file": "a.png", "caption": "first"}\n')
  os.symlink(folder / "gone.png", folder / "dangling.png")
  (folder / os.fsdecode(b"caf\xe9.png")).write_bytes(b"not an image")
  data = pipeline.default_data_config()
  data.update(name="captioned_folder", folder=str(folder), image_size=8,
              data_dir=str(folder / "tfds"))
  assert [r["captions"] for r in _records(data)] == [["first"]]
  with caplog.at_level("WARNING", logger="llmimg_jax.data.captioned_folder"):
    assert [r["captions"] for r in _records(data)] == [["first"]]
    assert "changed since it was built" not in caplog.text
    with open(folder / "captions.jsonl", "a") as f:
      f.write('{"file": "a.png", "caption": "second"}\n')
    assert [r["captions"] for r in _records(data)] == [["first"]]  # the same build
    assert "changed since it was built" in caplog.text
    # said once per process: evaluate.py loads the source twice (splits, then the split)
    assert [r["captions"] for r in _records(data)] == [["first"]]
    assert caplog.text.count("changed since it was built") == 1
  # The command to run, not 'delete that directory' after naming the folder of images too.
  command = re.search(r"delete that build \((rm -r .+?)\); a run started on it", caplog.text)
  assert command, caplog.text
  assert shlex.split(command[1]) == ["rm", "-r", str(pipeline.folder_builder(data).data_dir)]
  shutil.rmtree(shlex.split(command[1])[2])
  assert [r["captions"] for r in _records(data)] == [["first", "second"]]
  # An image replaced (same name, other pixels) is an edit too.
  caplog.clear()
  Image.new("RGB", (8, 9), (200, 2, 3)).save(folder / "a.png")
  with caplog.at_level("WARNING", logger="llmimg_jax.data.captioned_folder"):
    assert _records(data)[0]["image"][0, 0].tolist() == [1, 2, 3]  # the same build
  assert "changed since it was built" in caplog.text


def _one_image_folder(tmp_path):
  """(a folder of one image captioned "first", a data config reading it at 8px)."""
  folder = tmp_path / "imgs"
  folder.mkdir()
  Image.new("RGB", (8, 8)).save(folder / "a.png")
  (folder / "captions.jsonl").write_text('{"file": "a.png", "caption": "first"}\n')
  data = pipeline.default_data_config()
  data.update(name="captioned_folder", folder=str(folder), image_size=8,
              data_dir=str(tmp_path / "tfds"))
  return folder, data


def test_a_built_folder_is_read_after_the_folder_is_gone(tmp_path, caplog):
  folder, data = _one_image_folder(tmp_path)
  assert [r["captions"] for r in _records(data)] == [["first"]]
  shutil.rmtree(folder)  # archived, or on another machine than the shared data_dir
  with caplog.at_level("WARNING", logger="llmimg_jax.data.captioned_folder"):
    assert [r["captions"] for r in _records(data)] == [["first"]]
  assert "changed since" not in caplog.text
  data.data_dir = str(tmp_path / "other")  # not built there: the missing folder is the error
  with pytest.raises(ValueError, match="existing folder .* no build of it in data.data_dir"):
    pipeline.validate_data_config(data)


def test_a_first_build_has_no_tfds_warning_about_the_missing_build(tmp_path, caplog):
  """Asking TFDS whether a dataset not yet built is prepared warned "Variant folder DIR/1.0.0 has
  no dataset_info.json" (2-4 times in every first prepare / train.py, and before the error of a
  missing folder, as if it were its cause)."""
  folder, data = _one_image_folder(tmp_path)
  with caplog.at_level("WARNING"):
    assert not pipeline.is_built(data)
    assert len(_records(data)) == 1
    assert pipeline.is_built(data)
    data.folder = str(tmp_path / "nope")
    with pytest.raises(ValueError, match="existing folder"):
      pipeline.validate_data_config(data)
  assert "dataset_info.json" not in caplog.text


def test_builders_of_datasets_not_built_leave_no_folder_in_the_temp_dir(tmp_path, monkeypatch):
  """TFDS's DatasetBuilder left an empty tmp*tfds folder in the temp dir (its
  DatasetInfo.initialize_from_bucket) each time a builder of a dataset not yet built was made:
  two per first prepare of a folder, hundreds in /tmp from the tests."""
  temp = tmp_path / "temp"
  temp.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(temp))
  _, data = _one_image_folder(tmp_path)
  assert not pipeline.is_built(data)
  assert len(_records(data)) == 1  # validates, builds, reads
  captioned_shapes.CaptionedShapes(config="tiny_32", data_dir=str(tmp_path / "tfds"))
  assert not list(temp.iterdir())


def _records(data) -> list[dict]:
  source = pipeline.load_source(data)
  return [source[i] for i in range(len(source))]


def test_config_validation_reads_the_captions_files_before_any_build(tmp_path):
  """train.py validates the config in seconds: a folder it cannot build from is refused there."""
  folder = tmp_path / "imgs"
  folder.mkdir()
  Image.new("RGB", (8, 8)).save(folder / "a.png")
  data = pipeline.default_data_config()
  data.name, data.folder, data.image_size = "captioned_folder", str(folder), 8
  for captions, match in ((None, "No captions file in"),
                          ("name,desc\na.png,red\n",
                           r"header \['name', 'desc'\] needs a file column"),
                          ("file,caption\na.png,red\n".encode("utf-16"), "UTF-16 text")):
    if captions is not None:
      path = folder / "captions.csv"
      path.write_bytes(captions if isinstance(captions, bytes) else captions.encode())
    with pytest.raises(captioned_folder.FolderError, match=match):
      pipeline.validate_data_config(data)
  (folder / "captions.csv").write_text('"cap\ntion",image,text\n"x\ny",a.png,red\n')  # a quoted
  pipeline.validate_data_config(data)  # line break in the header is one record, as when built
  assert not (tmp_path / "tfds").exists()
  # Once built, the build is what a run uses (resuming warns if the folder changed): no refusal.
  data.data_dir = str(tmp_path / "tfds")
  assert len(pipeline.load_source(data)) == 1
  (folder / "captions.csv").unlink()
  pipeline.validate_data_config(data)


def test_each_image_size_is_its_own_build(tmp_path):
  """One folder loaded at 8px then 16px into one data_dir: two builds, not the 8px one reread."""
  folder = tmp_path / "imgs"
  folder.mkdir()
  image = np.zeros((32, 32, 3), np.uint8)
  image[:, 16:] = (0, 0, 255)  # left half black, right half blue
  Image.fromarray(image).save(folder / "a.png")
  (folder / "captions.jsonl").write_text('{"file": "a.png", "caption": "black and blue"}\n')
  assert (captioned_folder.folder_config(str(folder), 8).name
          != captioned_folder.folder_config(str(folder), 16).name)
  data = pipeline.default_data_config()
  data.update(name="captioned_folder", folder=str(folder), data_dir=str(tmp_path / "tfds"))
  for size in (8, 16):
    data.image_size = size
    (record,) = _records(data)
    assert record["image"].shape == (size, size, 3)
    np.testing.assert_array_equal(record["image"], images_lib.resize_square(image, size))


def test_a_folder_of_the_longest_name_builds(tmp_path):
  """Its build folder, SLUG_SIZE_DIGEST, was over 255 bytes for a folder name of over 244:
  'File name too long', with a fix (another data_dir) that could not help. Shorter names keep
  their build's name."""
  folder = tmp_path / ("p" * 255)
  folder.mkdir()
  Image.new("RGB", (8, 8)).save(folder / "a.png")
  (folder / "captions.jsonl").write_text('{"file": "a.png", "caption": "x"}\n')
  name = captioned_folder.folder_config(str(folder), 8).name
  assert len(name) == 255 and name.startswith("p" * 244 + "_8_")
  assert captioned_folder.folder_config(str(tmp_path / ("p" * 244)), 8).name.startswith(
      "p" * 244 + "_8_")
  data = pipeline.default_data_config()
  data.update(name="captioned_folder", folder=str(folder), data_dir=str(tmp_path / "tfds"),
              image_size=8)
  assert len(pipeline.load_source(data)) == 1


def test_a_symlink_loop_in_the_folder_is_walked_once(tmp_path):
  """A link back to the folder (or above it) is not followed round and round: the fingerprint
  is the folder's own (two such links would otherwise take 2**40 walks: a hung build)."""
  Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
  (tmp_path / "captions.jsonl").write_text('{"file": "a.png", "caption": "x"}\n')
  (tmp_path / "sub").mkdir()
  plain = captioned_folder.fingerprint(str(tmp_path))
  os.symlink("..", tmp_path / "sub" / "up")
  assert captioned_folder.fingerprint(str(tmp_path)) == plain


def test_a_captions_name_that_is_no_file_is_hashed_as_absent(tmp_path):
  """A FIFO named captions.csv beside captions.jsonl (which the build reads) blocked the
  fingerprint's read of it: the build hung at its start, without a word."""
  Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
  (tmp_path / "captions.jsonl").write_text('{"file": "a.png", "caption": "x"}\n')
  plain = captioned_folder.fingerprint(str(tmp_path))
  os.mkfifo(tmp_path / "captions.csv")
  hashed = []
  reader = threading.Thread(target=lambda: hashed.append(captioned_folder.fingerprint(
      str(tmp_path))), daemon=True)
  reader.start()
  reader.join(timeout=60)
  if reader.is_alive():  # blocked in its read of the FIFO: a writer's close lets it go
    os.close(os.open(tmp_path / "captions.csv", os.O_WRONLY))
    reader.join()
  assert hashed == [plain]
