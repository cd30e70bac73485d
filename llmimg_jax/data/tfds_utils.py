"""Small helpers shared by the TFDS builders of this package (no TensorFlow needed), and the
error of a dataset that cannot be built or trained on as configured."""
from __future__ import annotations

import errno
import inspect
import logging
import os
import shlex
import shutil
import socket
from pathlib import Path

import tensorflow_datasets as tfds
from etils import epath

from llmimg_jax import console, output_files

try:
  import fcntl
except ImportError:  # Windows: no flock, no dead builds removed
  fcntl = None

log = logging.getLogger(__name__)


class LocalCodePathMixin:
  """Resolves `code_path` with `inspect.getfile`.

  TFDS's default goes through `importlib.resources`, which for an editable install needs the
  `importlib_resources` backport (not installed on Python >= 3.9) and fails with
  ModuleNotFoundError. List this mixin before `tfds.core.GeneratorBasedBuilder`.
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(inspect.getfile(cls))


class DeadBuildsMixin:
  """Removes the folders that builds of the same dataset killed mid-way (SIGKILL, a preempted
  job) left. TFDS builds in `incomplete.XXXXXX_VERSION/` beside the version folder and removes it
  on an exception, never after a kill (nor at the next build): each such build left one, with
  its shuffle files (up to the dataset's size). Here a build holds an flock on
  `incomplete.XXXXXX_VERSION.lock` beside its folder while it runs, so a folder whose lock no
  process holds (a lock dies with its process) is a dead build's: `_remove_dead_builds` (call it
  from `_split_generators`, or `_generate_splits` where a builder overrides it) removes those,
  never a live build's. The lock names its host, and only this host's builds are judged: where
  flock is local to each host (gcsfuse, NFS with local locks) another host's live build looks
  dead. Folders of other hosts, or without a lock (builds before this), are named in a warning.
  List this mixin before `tfds.core.GeneratorBasedBuilder`."""

  _build_lock = None  # (open lock file, its path) of this builder's build in progress

  def download_and_prepare(self, *args, **kwargs):
    try:
      with console.bars_guarded("build"):
        return super().download_and_prepare(*args, **kwargs)
    finally:
      if self._build_lock is not None:  # the build is renamed or removed by now
        (lock, path), self._build_lock = self._build_lock, None
        Path(path).unlink(missing_ok=True)
        lock.close()

  def _remove_dead_builds(self) -> None:
    own = os.path.normpath(os.fspath(self.data_dir))  # the incomplete.* folder while building
    parent, name = os.path.split(own)
    if fcntl is None or "://" in own or not name.startswith("incomplete."):
      return
    # Locked under a name no other build reads, then renamed (the lock stays with the file):
    # another build never sees this build's lock file unheld and takes the build for dead.
    lock = open(own + ".lock.new", "w")  # pylint: disable=consider-using-with  # held till done
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:  # a filesystem without flock: no build can be known dead
      lock.close()
      Path(lock.name).unlink(missing_ok=True)
      log.info("Not removing dead builds beside %s: no lock there (%s).", own, e)
      return
    lock.write(socket.gethostname() + "\n")
    lock.flush()
    os.replace(lock.name, own + ".lock")
    self._build_lock = lock, own + ".lock"
    version = name.split("_", 1)[-1]
    for entry in sorted(os.listdir(parent)):
      path = os.path.join(parent, entry)
      if (entry.startswith("incomplete.") and entry.endswith("_" + version) and path != own
          and os.path.isdir(path)):
        _remove_if_dead(path)


def _remove_if_dead(path: str) -> None:
  """Removes the incomplete build folder `path` if it is this host's and no process holds its
  lock."""
  try:
    fd = os.open(path + ".lock", os.O_RDWR)  # for writing too: NFS's flock needs it
  except FileNotFoundError:
    log.warning("%s is a build that did not finish (killed, or one running from code before "
                "its builds were locked); if no build of this dataset is running, delete it.",
                path)
    return
  except OSError as e:  # e.g. another user's, in a shared data_dir: whether it is live is unknown
    log.warning("%s is a build that did not finish or is running (its lock cannot be opened "
                "here: %s); if no build of this dataset is running, delete it and its .lock.",
                path, e)
    return
  try:
    host = os.read(fd, 256).decode(errors="replace").strip()
    if host != socket.gethostname():  # its lock may be held there, unseen here
      log.warning("%s is a build on host %s that did not finish or is running; if no build of "
                  "this dataset is running there, delete it and its .lock.", path, host or "?")
      return
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: a live build
      return
    try:
      shutil.rmtree(path)
    except FileNotFoundError:  # removed by another build that found it dead first
      pass
    except OSError as e:  # e.g. another user's files: its lock stays, the next build tries again
      log.warning("%s, left by a build that was killed, could not be removed (%s); delete it and "
                  "its .lock.", path, e)
      return
    Path(path + ".lock").unlink(missing_ok=True)
    log.info("Removed %s, left by a build that was killed.", path)
  finally:
    os.close(fd)


class LocalDatasetInfo(tfds.core.DatasetInfo):
  """The DatasetInfo of a dataset built here (no published copy to fetch).

  A builder whose dataset is not prepared yet calls `info.initialize_from_bucket()` (TFDS
  4.9.10: core/dataset_builder.py:301), which makes a tempfile.mkdtemp folder to copy the
  dataset's published info files from GCS into (core/dataset_info.py:886) and never removes it:
  with GCS off in this TFDS, one empty /tmp/tmp*tfds per builder made. Here it does nothing."""

  def initialize_from_bucket(self) -> None:
    pass


def delete_command(build_dir: str | os.PathLike) -> str:
  """The shell command that deletes a build (a bucket's path alone: its own tool deletes it)."""
  path = os.fspath(build_dir)
  return path if "://" in path else f"rm -r {shlex.quote(path)}"


class DatasetError(ValueError):
  """A dataset that cannot be built (data_dir not a folder, not writable, full) or trained on
  as configured (too few records); the message names it and the fix."""


def is_prepared(dataset: tfds.core.DatasetBuilder) -> bool:
  """dataset.is_prepared(), without TFDS's warning "Variant folder DIR has no dataset_info.json"
  for a dataset not built yet (DIR missing), which every first command printed, 2-4 times, even
  before an error that had nothing to do with it. A DIR that exists is still TFDS's to judge; one
  in a folder this user may not enter is a DatasetError naming that folder."""
  path = getattr(dataset, "data_path", None)
  if path is not None and (why := output_files.why_closed(path, f"The dataset folder {path}")):
    raise DatasetError(why)  # not taken for a dataset to build, which fails on the same folder
  if path is not None and not epath.Path(path).exists():
    return False
  return dataset.is_prepared()


# A failed write as the array_record writer (C++) raises it, a RuntimeError: 'Failed to finalize
# writing of split "train": write() failed: No space left on device; writing PATH; ...'.
_WRITE_ERRORS = tuple(os.strerror(n) for n in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO,
                                               errno.EROFS, errno.EACCES, errno.EPERM))


def is_os_error(e: BaseException) -> bool:
  """Whether `e` is an OSError, or the array_record writer's failed write (a RuntimeError)."""
  return isinstance(e, OSError) or (isinstance(e, RuntimeError)
                                    and any(text in str(e) for text in _WRITE_ERRORS))


class BuiltMeanwhile(Exception):
  """Another process finished the same build first (its rename won): read that build."""


def build(dataset: tfds.core.DatasetBuilder, what: str, data_dir: str) -> None:
  """dataset.download_and_prepare(), an OSError (or the records writer's failed write: a full
  disk) named with the data_dir and the fix (not os.makedirs' or a writer's traceback); raises
  BuiltMeanwhile where another process (two prepare or train.py on one data_dir) finished the
  same build first: TFDS's "Cannot rename ... Destination ... already exists" was reported as a
  folder to check, the dataset built."""
  try:
    dataset.download_and_prepare()
  except (OSError, RuntimeError) as e:
    if isinstance(e, FileExistsError) and (
        epath.Path(dataset.data_path) / "dataset_info.json").exists():
      raise BuiltMeanwhile(f"{what} was built in {data_dir} by another process meanwhile") from e
    if not is_os_error(e):
      raise
    raise DatasetError(
        f"Could not build {what} in data.data_dir={data_dir!r} ({type(e).__name__}: {e}). "
        "Check that path, or set data.data_dir to a folder you can write, with room for the "
        "build.") from e
