"""Checks of the workdir before anything is built: every host can write it, and on several hosts
it is one folder they all share; the run's claim on it; and a checkpoint that could not be
written later, named."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import jax

from llmimg_jax import cli
from llmimg_jax import output_files
from llmimg_jax.train import checkpoint, hosts

log = logging.getLogger(__name__)
LOCK_FILE = ".train.lock"  # in the workdir: host 0's flock while the run trains; who holds it


class WorkdirNotWritableError(ValueError):
  """A directory the run writes into cannot be written (checked before anything is built)."""


class WorkdirNotSharedError(WorkdirNotWritableError):
  """The hosts of a multi-host run do not share the workdir (e.g. each host's own disk)."""


class WorkdirInUseError(WorkdirNotWritableError):
  """Another train.py process trains in the workdir (it holds LOCK_FILE)."""


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (a full disk, lost permissions, an unmounted share)."""


@contextlib.contextmanager
def checkpoint_saving(checkpoints: Path) -> Iterator[None]:
  """Any error inside (Orbax raises an asynchronous save's at the next save, or at close) as a
  CheckpointSaveError naming the newest complete checkpoint, which a rerun resumes from: a full
  disk is not a ValueError of TensorStore's under hundreds of lines of traceback."""
  try:
    yield
  except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many types
    found = Path(checkpoints).iterdir() if Path(checkpoints).is_dir() else ()
    steps = sorted(int(p.name) for p in found if p.name.isdigit())
    newest = (f"The newest complete checkpoint there is step {steps[-1]}" if steps else
              "No checkpoint of this run is complete there")
    raise CheckpointSaveError(
        f"A checkpoint could not be written to {checkpoints} ({checkpoint.brief_error(e)}). "
        f"{newest}, and the save cut short is never taken for one. Free space on that disk (or "
        "restore its permissions or mount), then rerun the same command to resume.") from e


_WRITTEN_DIRS = ("", "checkpoints", "samples", "tensorboard")  # "": the workdir itself


def _nearest_existing(path: Path) -> Path:
  """`path` or its nearest parent that exists, a link to nothing included (see _unwritable)."""
  while not os.path.lexists(path):
    path = path.parent
  return path


def _unwritable(workdir: Path) -> str | None:
  """Why this host cannot write the workdir or a folder in it that the run writes, else None.
  Creates nothing: a new workdir is checked by writing into its nearest existing parent."""
  workdir = workdir.absolute()
  for name in _WRITTEN_DIRS:
    path = workdir / name
    if name and not os.path.lexists(path):  # created in the workdir, which was checked first
      continue
    path = _nearest_existing(path)
    try:  # through a link to nothing (an unmounted disk), a loop of links: makedirs fails
      os.stat(path)
    except OSError as e:
      return f"{path} is a link to {os.path.realpath(path)} ({e.strerror})"
    if problem := output_files.cannot_write(path):
      return f"{path}: {problem}"
  return None


def _sees(path: Path, wait_s: float = 5.0) -> bool:
  """Whether `path` exists, allowing a shared filesystem a few seconds to show it."""
  end = time.monotonic() + wait_s
  while not path.exists():
    if time.monotonic() > end:
      return False
    time.sleep(0.25)
  return True


def check_workdir_shared(workdir: Path) -> None:
  """Every host sees a file host 0 writes where the workdir is (its nearest existing folder):
  a workdir on each host's own disk would fail at the first checkpoint, which each host writes
  part of, with a FileNotFoundError on one host while the others wait."""
  token = hosts.host_0s(secrets.randbits(31))
  folder = _nearest_existing(workdir.absolute())
  probe = folder / f".shared_test.{token}"
  hosts.on_host_0(probe.touch, "shared_probe_written", f"write {probe}",
                  WorkdirNotWritableError)
  missing = hosts.failed_hosts(_sees(probe))
  hosts.on_host_0(lambda: probe.unlink(missing_ok=True), "shared_probe_removed",
                  f"remove {probe}", WorkdirNotWritableError)
  if missing:
    raise WorkdirNotSharedError(
        f"Host(s) {missing} do not see the file host 0 wrote in {folder}, so the workdir "
        f"{workdir} is not one folder all hosts share (each host writes its part of every "
        "checkpoint there). Pass a --workdir on a filesystem every host mounts at the same path "
        "(NFS, a gcsfuse mount); nothing was trained.")


def check_workdir_writable(workdir: Path) -> None:
  """Every host can write the workdir (Orbax would otherwise wait minutes for a step directory
  that cannot be made, then fail with a TimeoutError that names neither), and shares it."""
  problem = _unwritable(workdir)
  if jax.process_count() > 1:
    others = hosts.failed_hosts(problem is None, "workdir_checked")
    if problem is None and others:
      problem = f"host(s) {others} cannot write it; their logs name the folder"
  if problem is not None:
    raise WorkdirNotWritableError(
        f"The run cannot write to its workdir ({problem}). Fix the folder's permissions (or "
        "free space, or the mount) or pass another --workdir; nothing was trained.")
  if jax.process_count() > 1:
    check_workdir_shared(workdir)


def check_workdir_outside_data(workdir: Path, data_cfg) -> None:
  """A ValueError for a workdir in a captioned_folder's folder: the run's sample grids would be
  images added to it, and every resume would report the folder changed since its build."""
  if output_files.in_training_folder(workdir, data_cfg):
    raise ValueError(f"--workdir {str(workdir)!r} is inside config.data.folder="
                     f"{data_cfg.folder!r}: the run's sample grids would be images added to the "
                     "folder, whose build is then reported as changed; pass a --workdir outside "
                     "it, e.g. runs/NAME.")


def local_workdir(workdir: str | Path) -> Path:
  """The workdir as a local path, ~ expanded and in full (output_files.in_full): every path the log
  names is in it. A URL is refused: pathlib would turn 'gs://b/run' into the relative local folder
  'gs:/b/run', and the run would write there without a word."""
  text = str(workdir)
  if not text.strip():  # Path("") is the current directory: the run would write there
    raise ValueError(cli.blank_flag("--workdir", "RUN",
                                    "name the directory for checkpoints, samples and logs"))
  if "://" in text:
    raise ValueError(
        f"workdir {text!r} is a URL, but checkpoints, samples and logs are written through the "
        "local filesystem. Mount the bucket (e.g. with gcsfuse; on several hosts, a mount every "
        "host shares) and pass the mount's path.")
  path = output_files.flag_path(text, "--workdir")
  try:
    is_file = path.exists() and not path.is_dir()
  except OSError as e:  # e.g. a name over 255 bytes: a traceback
    raise ValueError(f"workdir {text!r} cannot be used ({e.strerror}); pass another --workdir."
                     ) from e
  if is_file:
    raise ValueError(f"workdir {text!r} is a file, not a directory; pass a directory (new or a "
                     "run's) for checkpoints, samples and logs.")
  if why := output_files.unstorable(full := output_files.in_full(path)):
    raise ValueError(f"workdir {str(full)!r} {why}: its checkpoints could not be saved. Pass "
                     "another --workdir, without it; nothing was trained.")
  return full


class WorkdirClaim:
  """Host 0's flock on WORKDIR/LOCK_FILE (its descriptor; None elsewhere, or where nothing could
  be locked)."""

  def __init__(self, workdir: Path, fd: int | None):
    self.workdir, self.fd = workdir, fd

  def keep(self) -> None:
    """Before each save, on every host: LOCK_FILE deleted or replaced by hand (it stays in the
    workdir, naming a run long gone) lets a second train.py claim the workdir beside this run,
    both then failing their saves, blaming the disk. Claimed again if it is free; else a
    WorkdirInUseError naming the other run, on every host, before this run saves."""
    hosts.on_host_0(self._keep, "workdir_kept", f"keep {self.workdir / LOCK_FILE}",
                    WorkdirInUseError)

  def _keep(self) -> None:
    if self.fd is None:
      return
    try:  # NFS: ESTALE for a file deleted from another machine
      held, now = os.fstat(self.fd), os.stat(self.workdir / LOCK_FILE)
      if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
        return
    except OSError:
      pass
    with contextlib.suppress(OSError):
      os.close(self.fd)
    self.fd = None
    self.fd = _claim(self.workdir, during_run=True)  # None: it warned that it could not
    if self.fd is not None:
      log.warning("%s was deleted or replaced during this run; claimed again.",
                  self.workdir / LOCK_FILE)


def check_workdir_free(workdir: Path) -> None:
  """WorkdirInUseError now, on every host, where another train.py holds the workdir: a second run
  (a resubmitted job) was refused only after its T5 load and data build, minutes to hours. A new
  workdir is not made (workdir_claimed claims it); an existing LOCK_FILE is locked shared for an
  instant, which _claim's retries outlast."""
  hosts.on_host_0(lambda: _check_free(workdir), "workdir_free",
                  f"find whether another train.py holds {workdir / LOCK_FILE}",
                  WorkdirInUseError)


def _check_free(workdir: Path) -> None:
  try:
    fd = os.open(workdir / LOCK_FILE, os.O_RDWR)
  except OSError:  # none yet; or one workdir_claimed warns of
    return
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released by the close
  except OSError as e:
    if e.errno == errno.EWOULDBLOCK:
      raise _in_use(workdir, _holder(fd)) from e
  finally:
    os.close(fd)


def _holder(fd: int) -> str:
  """Who holds the lock file `fd` (as _claim wrote it)."""
  return os.pread(fd, 200, 0).decode(errors="replace").strip() or "its process"


def _in_use(workdir: Path, holder: str) -> WorkdirInUseError:
  return WorkdirInUseError(
      f"The workdir {workdir} is in use by another train.py ({holder}): two runs there would "
      "save the same checkpoints, and one's start deletes the other's save in progress. Wait "
      "for it to end (or stop it), or pass another --workdir; nothing was trained.")


@contextlib.contextmanager
def workdir_claimed(workdir: Path) -> Iterator[WorkdirClaim]:
  """Host 0's flock on WORKDIR/LOCK_FILE while the block runs: a second claim (train.py, train())
  on the workdir raises WorkdirInUseError naming the first. The lock goes with the process,
  however it ends; where the file cannot be opened or locked (no flock), nothing is claimed (a
  warning)."""
  claim = WorkdirClaim(workdir, hosts.on_host_0(
      lambda: _claim(workdir), "workdir_claimed", f"claim {workdir / LOCK_FILE}",
      WorkdirInUseError))
  try:
    yield claim
  finally:
    if claim.fd is not None:
      os.close(claim.fd)


def _claim(workdir: Path, during_run: bool = False) -> int | None:
  if not during_run:  # during it, a workdir gone (an unmounted share) is not made again
    workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / LOCK_FILE
  fd = None
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # for writing: NFS's flock needs it
    for retry in (0.05, 0.05, 0.05, None):  # past another start's check_workdir_free (instants)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        if retry is None:
          raise
        time.sleep(retry)
  except OSError as e:
    holder = "its process"
    if fd is not None:
      holder = _holder(fd)
      os.close(fd)
    if e.errno != errno.EWOULDBLOCK:  # e.g. another user's lock file: PermissionError
      log.warning("Could not lock %s (%s): a second train.py on this workdir would not be "
                  "refused.", path, e.strerror)
      return None
    if during_run:
      raise WorkdirInUseError(
          f"The workdir {workdir} was claimed by another train.py ({holder}) after {path} was "
          "deleted or replaced during this run: two runs there would save the same checkpoints. "
          "This run stopped before its next save; let the other run on, or stop it and rerun "
          "this command to resume from the newest checkpoint.") from e
    raise _in_use(workdir, holder) from e
  try:  # who holds it, for a second run's error; the lock holds without it (a full disk)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n".encode())
  except OSError as e:
    log.warning("Could not write who holds %s (%s).", path, e.strerror)
  return fd
