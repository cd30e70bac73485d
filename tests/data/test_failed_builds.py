"""A build that fails part-way (a full disk, its folder removed) ends prepare in one line naming
the path and the fix, and leaves no build that a later command would read; so does a --preview
that cannot be written after the build."""
from __future__ import annotations

import os
import shlex
import shutil
import threading
import types

import pytest
from PIL import UnidentifiedImageError
from tensorflow_datasets.core import file_adapters

from llmimg_jax.data import caption_files, captioned_shapes, images, pipeline, prepare, tfds_utils
from tests.data.utils import _usage_error, captioned_images, folder_argv


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
  err = _usage_error(capsys, folder_argv(captioned_images(tmp_path, 6), data_dir))
  assert f"error: Could not build captioned_folder:{tmp_path / 'imgs'} in " in err, err
  assert ("(RuntimeError: Failed to finalize writing of split \"train\": write() failed: No space "
          "left on device; writing ") in err, err
  assert err.endswith("Check that path, or set --data_dir to a folder you can write, with room "
                      "for the build.\n"), err
  assert "Traceback" not in err
  assert _files_under(data_dir) == []  # TFDS removed its incomplete build, and the lock is gone


def test_a_folder_removed_during_its_build_leaves_no_build(tmp_path, capsys, monkeypatch):
  """Each image after the folder was removed was skipped as unknown_file, and the build of those
  read before was kept as complete (exit 0), read from then on by train.py with no warning (a
  build whose folder is gone is read as it is)."""
  folder, data_dir = captioned_images(tmp_path, 6), tmp_path / "tfds"
  load_image, calls, lock = images.load_image, [], threading.Lock()

  def load_then_remove(path, *args):  # the folder removed as the 3rd image is read
    with lock:
      calls.append(path)
      if len(calls) == 3:
        shutil.rmtree(folder)
    return load_image(path, *args)
  monkeypatch.setattr(images, "load_image", load_then_remove)
  monkeypatch.setattr(images, "_decode_threads", lambda: 1)  # the first two read before
  err = _usage_error(capsys, folder_argv(folder, data_dir))
  assert err.endswith(
      f"error: captioned_folder: {folder} was removed, renamed or made unreadable during its "
      "build (No such file or directory); the part built (2 of 6 captioned images) is not kept. "
      "Restore the folder (or set --folder to where it is now) and build again.\n"), err
  assert _files_under(data_dir) == []


def test_a_folder_made_unreadable_during_its_build_leaves_no_build(tmp_path, capsys, monkeypatch):
  """chmod 000 (as root, whom chmod does not stop: its access check)."""
  folder, data_dir = captioned_images(tmp_path, 6), tmp_path / "tfds"
  access = os.access
  monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
      os.fspath(path) != str(folder) and access(path, mode, **kw)))
  err = _usage_error(capsys, folder_argv(folder, data_dir))
  assert "during its build (Permission denied); the part built (6 of 6 captioned " in err, err
  assert _files_under(data_dir) == []


def test_a_folder_that_cannot_be_listed_still_builds(tmp_path, monkeypatch):
  """A folder of mode 711 (its files reached by name, its list refused): a build reads the
  images its captions name, and the check of a folder removed during its build lets it be."""
  folder, data_dir = captioned_images(tmp_path, 6), tmp_path / "tfds"
  for name in ("scandir", "listdir"):
    def refused(path=".", *, original=getattr(os, name)):
      if str(path) == str(folder):
        raise PermissionError(13, "Permission denied", str(path))
      return original(path)
    monkeypatch.setattr(os, name, refused)
  report = prepare.main(folder_argv(folder, data_dir))
  assert report["num_examples"] == 6


def test_a_folder_removed_before_its_build_names_the_folder_flag(tmp_path, capsys, monkeypatch):
  """Removed after the config was checked: a FileNotFoundError, which prepare printed as a data_dir
  it could not write ('... set --folder (or --folder) to a folder of images.). Check that path, or
  set --data_dir to a folder you can write, with room for the build.')."""
  folder, data_dir = captioned_images(tmp_path, 6), tmp_path / "tfds"
  check_caption_files = caption_files.check_caption_files

  def check_then_remove(path):
    check_caption_files(path)
    shutil.rmtree(path)
  monkeypatch.setattr(caption_files, "check_caption_files", check_then_remove)
  err = _usage_error(capsys, folder_argv(folder, data_dir))
  assert err.endswith(f"error: captioned_folder: source folder {folder} does not exist; set "
                      "--folder to a folder of images.\n"), err
  assert _files_under(data_dir) == []


def test_a_preview_that_cannot_be_written_after_the_build_is_one_line_error(tmp_path, capsys,
                                                                            monkeypatch):
  """Its folder, checked before the build, removed during it: the write's traceback."""
  folder, data_dir, out = captioned_images(tmp_path, 6), tmp_path / "tfds", tmp_path / "out"
  load_source = pipeline.load_source

  def load_then_remove(*args):
    source = load_source(*args)
    shutil.rmtree(out)
    return source
  monkeypatch.setattr(pipeline, "load_source", load_then_remove)
  argv = folder_argv(folder, data_dir, "--preview", str(out / "grid.png"))
  err = _usage_error(capsys, argv)
  assert err.endswith(
      f"error: could not write --preview '{out / 'grid.png'}' (FileNotFoundError: No such file "
      f"or directory); the dataset is built in {data_dir}: run prepare again with a --preview it "
      "can write (the build is reused).\n"), err
  monkeypatch.setattr(pipeline, "load_source", load_source)
  assert prepare.main(argv)["num_examples"] == 6 and (out / "grid.png").is_file()


def test_a_build_that_cannot_be_read_for_the_preview_is_not_named_a_preview_it_cannot_write(
    tmp_path, capsys, monkeypatch):
  """An image of the build that does not decode (PIL's UnidentifiedImageError, an OSError) as the
  grid reads it was named a --preview that could not be written ('... run prepare again with a
  --preview it can write (the build is reused).'): prepare again would fail the same way."""
  folder, data_dir, out = captioned_images(tmp_path, 6), tmp_path / "tfds", tmp_path / "out"
  load_source = pipeline.load_source

  class Undecodable:  # the built source, whose records do not decode
    def __init__(self, source):
      self.source = source

    def __len__(self):
      return len(self.source)

    def __getitem__(self, index):
      raise UnidentifiedImageError("cannot identify image file <_io.BytesIO object>")
  monkeypatch.setattr(pipeline, "load_source", lambda *args: Undecodable(load_source(*args)))
  with pytest.raises(UnidentifiedImageError):
    prepare.main(folder_argv(folder, data_dir, "--preview", str(out / "grid.png")))
  assert "--preview" not in capsys.readouterr().err


class _TooManyOpenFiles:
  def __getitem__(self, index: int):
    raise RuntimeError("Too many open files")


def test_a_damaged_build_is_one_error_naming_it_and_the_fix(shapes_cfg, tokenizer, tmp_path):
  """Bytes of a built array_record file changed (a disk error, a copy cut short): the batch
  that read them raised Riegeli's 'Corrupted Riegeli/records file' RuntimeError, naming neither
  the dataset nor the fix (train.py printed a traceback mid-run)."""
  cfg = shapes_cfg.copy_and_resolve_references()
  cfg.data_dir = str(tmp_path / "tfds")
  shutil.copytree(shapes_cfg.data_dir, cfg.data_dir)
  build = pipeline.builder(cfg).data_dir
  record_file, = [os.path.join(build, f) for f in os.listdir(build) if "-train.array_record" in f]
  data = bytearray(open(record_file, "rb").read())
  data[len(data) // 2:len(data) // 2 + 64] = bytes(b ^ 0xFF for b in data[len(data) // 2:][:64])
  with open(record_file, "wb") as f:
    f.write(data)
  source = pipeline.load_source(cfg)
  batches = pipeline.make_iterator(cfg, tokenizer, batch_size_per_host=16, seed=0, source=source)
  with pytest.raises(tfds_utils.DatasetError) as error:
    for _ in range(len(source) // 16 + 1):
      next(batches)
  message = str(error.value)
  assert message.startswith("captioned_shapes/train record "), message
  assert f"cannot be read from {build} (RuntimeError: Corrupted Riegeli" in message, message
  assert message.endswith(f"the build is damaged (a disk error, or a copy cut short). Delete it "
                          f"(rm -r {shlex.quote(str(build))}) and rerun to build it again; a run "
                          "resumes from its last checkpoint."), message
  # Other errors of the reader (a file limit, a network file system's) are not the build's.
  source._source = _TooManyOpenFiles()  # pylint: disable=protected-access
  with pytest.raises(RuntimeError, match="^Too many open files$"):
    source[0]


def test_a_build_another_process_finished_first_is_read(shapes_cfg, tmp_path, monkeypatch,
                                                        caplog):
  """Two prepare (or train.py) building one dataset at once: the one whose rename came second
  exited 2, 'Could not build ... (FileExistsError: Cannot rename ... Destination ... already
  exists). Check that path, or set --data_dir to a folder you can write', the dataset built."""
  cfg = shapes_cfg.copy_and_resolve_references()
  cfg.data_dir = str(tmp_path)
  generate = captioned_shapes.CaptionedShapes._generate_splits

  def racing(self, *args):  # the other process builds while this one writes
    infos = generate(self, *args)
    if not racing.done:
      racing.done = True
      pipeline.load_source(cfg, "test")
    return infos

  racing.done = False
  monkeypatch.setattr(captioned_shapes.CaptionedShapes, "_generate_splits", racing)
  caplog.set_level("INFO")
  source = pipeline.load_source(cfg, "test")
  assert racing.done and len(source) == 64 and source[0]["captions"]
  assert (f"captioned_shapes/tiny_32 was built in {tmp_path} by another process meanwhile; "
          "reading that build.") in caplog.text
  assert not list(tmp_path.glob("captioned_shapes/tiny_32/incomplete*"))
