"""A folder build killed mid-way (SIGKILL, a preempted job) left TFDS's incomplete.* folder, with
its shuffle files, and every later build left its own beside it: the next build removes those
whose lock no process holds (tfds_utils.DeadBuildsMixin), never a live build's."""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
from pathlib import Path

from PIL import Image

from llmimg_jax.data import captioned_folder, captioned_shapes, tfds_utils

HOST = socket.gethostname() + "\n"  # what a build of this host writes in its lock


def _one_image_folder(tmp_path: Path) -> tuple[Path, str, Path]:
  """A folder of one captioned image, a data_dir, and where the folder's builds are made."""
  folder, data_dir = tmp_path / "photos", str(tmp_path / "tfds")
  folder.mkdir()
  Image.new("RGB", (8, 8)).save(folder / "a.png")
  (folder / "captions.jsonl").write_text(json.dumps({"file": "a.png", "caption": "a"}) + "\n")
  config = captioned_folder.folder_config(str(folder), 8)
  beside = captioned_folder.CaptionedFolder(config=config, data_dir=data_dir).data_path.parent
  return folder, data_dir, beside


def test_the_next_build_removes_a_killed_build_s_folder_not_a_live_one(tmp_path, caplog):
  folder, data_dir, beside = _one_image_folder(tmp_path)
  for name in ("incomplete.DEAD00_1.0.0", "incomplete.LIVE00_1.0.0", "incomplete.OLD000_1.0.0"):
    os.makedirs(beside / name)
    (beside / name / "shuffle.tmp").write_bytes(b"x" * 1000)
  (beside / "incomplete.DEAD00_1.0.0.lock").write_text(HOST)  # its process gone: unheld
  with open(beside / "incomplete.LIVE00_1.0.0.lock", "w") as live:  # another build's, running
    live.write(HOST)
    live.flush()
    fcntl.flock(live, fcntl.LOCK_EX)
    with caplog.at_level(logging.INFO):
      _, summary = captioned_folder.build_folder(str(folder), data_dir, 8)
  assert summary["num_examples"] == 1
  assert sorted(os.listdir(beside)) == [
      "1.0.0", "incomplete.LIVE00_1.0.0", "incomplete.LIVE00_1.0.0.lock",
      "incomplete.OLD000_1.0.0"]  # the build's own lock is gone too
  messages = [r.getMessage() for r in caplog.records]
  assert f"Removed {beside / 'incomplete.DEAD00_1.0.0'}, left by a build that was killed." in (
      messages)
  assert any(m.startswith(f"{beside / 'incomplete.OLD000_1.0.0'} is a build that did not finish")
             for m in messages)


def test_a_build_s_lock_is_held_before_another_build_can_see_it(tmp_path, monkeypatch):
  """Another build looking beside this one between the lock file's creation and its flock took
  it for a dead build's and removed the folder this build was writing."""
  folder, data_dir, _ = _one_image_folder(tmp_path)
  seen, flock = [], fcntl.flock

  def flock_after_another_build_looked(fd, operation):
    own = os.path.normpath(os.fspath(builder.data_dir))  # incomplete.*, while it builds
    if not seen:
      seen.append(os.path.isdir(own))
      tfds_utils._remove_if_dead(own)  # what a build starting now does with this one
      seen.append(os.path.isdir(own))
    return flock(fd, operation)

  monkeypatch.setattr(tfds_utils.fcntl, "flock", flock_after_another_build_looked, raising=True)
  builder = captioned_folder.CaptionedFolder(
      config=captioned_folder.folder_config(str(folder), 8), data_dir=data_dir)
  builder.download_and_prepare()
  assert seen == [True, True]
  assert builder.info.splits["train"].num_examples == 1


def test_a_captioned_shapes_build_removes_a_killed_build_s_folder(tmp_path):
  cfg = captioned_shapes.ShapesConfig(name="dead_test", resolution=32, num_train=8, num_test=0,
                                      num_holdout=0)
  builder = captioned_shapes.CaptionedShapes(config=cfg, data_dir=str(tmp_path), num_proc=1)
  beside = builder.data_path.parent
  os.makedirs(beside / "incomplete.DEAD00_1.0.0")
  (beside / "incomplete.DEAD00_1.0.0" / "shuffle.tmp").write_bytes(b"x" * 1000)
  (beside / "incomplete.DEAD00_1.0.0.lock").write_text(HOST)  # its process gone: unheld
  builder.download_and_prepare()
  assert builder.info.splits["train"].num_examples == 8
  assert sorted(os.listdir(beside)) == ["1.0.0"]


def test_a_lock_this_build_cannot_open_leaves_its_folder_and_the_build_goes_on(
    tmp_path, monkeypatch, caplog):
  """A data_dir shared by several users: another user's build (killed, or running) left a lock
  file that only that user may write (umask 022), and opening it raised PermissionError out of
  this build's _split_generators: the build failed, every time, until someone deleted it."""
  folder, data_dir, beside = _one_image_folder(tmp_path)
  os.makedirs(beside / "incomplete.OTHER0_1.0.0")
  (beside / "incomplete.OTHER0_1.0.0.lock").touch()
  os_open = os.open

  def open_as_another_user(path, flags, *args, **kwargs):  # root here: chmod would not refuse
    if os.fspath(path).endswith("incomplete.OTHER0_1.0.0.lock"):
      raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
    return os_open(path, flags, *args, **kwargs)

  monkeypatch.setattr(tfds_utils.os, "open", open_as_another_user)
  with caplog.at_level(logging.INFO):
    _, summary = captioned_folder.build_folder(str(folder), data_dir, 8)
  assert summary["num_examples"] == 1
  assert sorted(os.listdir(beside)) == [
      "1.0.0", "incomplete.OTHER0_1.0.0", "incomplete.OTHER0_1.0.0.lock"]
  assert any(m.startswith(f"{beside / 'incomplete.OTHER0_1.0.0'} is a build that did not finish")
             and "Permission denied" in m for m in (r.getMessage() for r in caplog.records))


def test_a_killed_build_s_folder_that_cannot_be_removed_is_not_said_removed(
    tmp_path, monkeypatch, caplog):
  """shutil.rmtree ignored its errors (a file of another user's in a shared data_dir, one in use
  on NFS), and the build logged 'Removed' and removed the lock of a folder still there: later
  builds took it for one from before builds were locked."""
  folder, data_dir, beside = _one_image_folder(tmp_path)
  os.makedirs(beside / "incomplete.DEAD00_1.0.0")
  (beside / "incomplete.DEAD00_1.0.0" / "theirs.tmp").write_bytes(b"x")
  (beside / "incomplete.DEAD00_1.0.0.lock").write_text(HOST)  # its process gone: unheld
  unlink = os.unlink

  def unlink_refusing_theirs(path, *args, **kwargs):  # root here: chmod would not refuse
    if os.path.basename(os.fspath(path)) == "theirs.tmp":
      raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
    return unlink(path, *args, **kwargs)

  monkeypatch.setattr(tfds_utils.shutil.os, "unlink", unlink_refusing_theirs)
  with caplog.at_level(logging.INFO):
    _, summary = captioned_folder.build_folder(str(folder), data_dir, 8)
  assert summary["num_examples"] == 1
  assert sorted(os.listdir(beside)) == [
      "1.0.0", "incomplete.DEAD00_1.0.0", "incomplete.DEAD00_1.0.0.lock"]  # tried again next
  messages = [r.getMessage() for r in caplog.records]
  assert not any(m.startswith("Removed") for m in messages), messages
  assert any(m.startswith(f"{beside / 'incomplete.DEAD00_1.0.0'}, left by a build that was "
                          "killed, could not be removed") and "Permission denied" in m
             for m in messages), messages


def test_a_build_of_another_host_is_never_taken_for_dead(tmp_path, caplog):
  """Where flock is local to each host (gcsfuse, NFS mounted with local locks), another host's
  live build holds a lock this host cannot see: only this host's builds are judged by it."""
  folder, data_dir, beside = _one_image_folder(tmp_path)
  os.makedirs(beside / "incomplete.THERE0_1.0.0")
  (beside / "incomplete.THERE0_1.0.0.lock").write_text("another-host\n")  # unheld here
  with caplog.at_level(logging.INFO):
    captioned_folder.build_folder(str(folder), data_dir, 8)
  assert sorted(os.listdir(beside)) == [
      "1.0.0", "incomplete.THERE0_1.0.0", "incomplete.THERE0_1.0.0.lock"]
  assert any(r.getMessage().startswith(f"{beside / 'incomplete.THERE0_1.0.0'} is a build on host "
                                       "another-host") for r in caplog.records)
