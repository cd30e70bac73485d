"""train/workdir.py: local_workdir's refusals of a workdir Orbax cannot save into, and the run's
claim on its workdir, each before anything is built (train.py prints them as one line; the other
refusals: tests/train/test_train_cli.py)."""
import contextlib
import fcntl
import os
import re
import socket
import threading

import pytest

from llmimg_jax.train import loop
from llmimg_jax.train.workdir import (LOCK_FILE, WorkdirClaim, WorkdirInUseError,
                                      check_workdir_free, local_workdir, workdir_claimed)
from tests.train.utils import tiny_config


@pytest.mark.parametrize("name, why", [
    # TensorStore wrote the arrays to runs/new/...; train.py exited 0, no checkpoint readable
    ("runs\\new", "holds a backslash, which Orbax's array storage (TensorStore) reads as a "
                  "folder separator"),
    # the first save failed after compiling, in 472 tracebacks, blaming the disk
    # Orbax's save globbed the path: no array in the checkpoint, or another run's ("runs/a*")
    ("run[1]", "holds a wildcard (*, ?, [...]), which Orbax's save reads as a pattern (a glob)"),
    ("run*", "holds a wildcard (*, ?, [...]), which Orbax's save reads as a pattern (a glob)"),
    ("run?", "holds a wildcard (*, ?, [...]), which Orbax's save reads as a pattern (a glob)"),
    (os.fsdecode(b"run_\xe9"), "is not UTF-8, which Orbax's array storage (TensorStore) cannot "
                               "name")])
def test_a_workdir_orbax_cannot_save_into_is_refused(name, why, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # the backslash is in the full path's parent too
  with pytest.raises(ValueError) as refused:
    local_workdir(name)
  assert str(refused.value) == (
      f"workdir {str(tmp_path / name)!r} {why}: its checkpoints could not be saved. Pass another "
      "--workdir, without it; nothing was trained.")
  assert not (tmp_path / name).exists()
  (tmp_path / "odd\\parent").mkdir()
  monkeypatch.chdir(tmp_path / "odd\\parent")
  with pytest.raises(ValueError, match="holds a backslash"):
    local_workdir("run")


def test_a_workdir_name_too_long_is_a_value_error_not_a_traceback(tmp_path):
  with pytest.raises(ValueError) as refused:  # an OSError (ENAMETOOLONG) from Path.exists
    local_workdir(tmp_path / ("w" * 256))
  assert str(refused.value) == (f"workdir {str(tmp_path / ('w' * 256))!r} cannot be used (File "
                                "name too long); pass another --workdir.")


def test_odd_names_orbax_stores_are_taken(tmp_path):
  for name in ("{b}#=!$]", "lone [", "sp ace%:;'\"", "new\nline", "é 中 🙂"):
    assert local_workdir(tmp_path / name) == tmp_path / name


def test_a_workdir_in_use_is_refused_naming_its_process_and_freed_after(shapes_data_dir,
                                                                        tmp_path, monkeypatch):
  """A second train.py on a busy workdir resumed beside the first, and its checkpoint manager
  deleted the first run's save in progress (which died, exit 3, blaming the disk). It is refused
  before its T5 load and data build (minutes to hours for a resubmitted job)."""
  run = tmp_path / "run"
  monkeypatch.setattr(loop, "_load_text", lambda config: pytest.fail("T5 loaded first"))
  with workdir_claimed(run):  # made by the claim
    with pytest.raises(WorkdirInUseError) as refused, workdir_claimed(run):
      pass
    assert re.fullmatch(
        rf"The workdir {run} is in use by another train\.py \(pid {os.getpid()} on "
        rf"{re.escape(socket.gethostname())}, since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d \S+\): two "
        r"runs there would save the same checkpoints, and one's start deletes the other's save "
        r"in progress\. Wait for it to end \(or stop it\), or pass another --workdir; nothing "
        r"was trained\.", str(refused.value)), str(refused.value)
    with pytest.raises(WorkdirInUseError) as refused_early:  # before its checkpoint manager
      loop.train(tiny_config(shapes_data_dir), run)
    assert str(refused_early.value) == str(refused.value)
    assert os.listdir(run) == [LOCK_FILE]
  with workdir_claimed(run):  # the first one's lock went with it
    pass
  check_workdir_free(run)
  with workdir_claimed(run):  # the check let go of the lock file
    pass
  check_workdir_free(tmp_path / "new")
  assert os.listdir(tmp_path) == ["run"]  # the check makes no workdir


def test_a_lock_file_deleted_during_the_run_is_claimed_again_before_a_save(tmp_path, caplog):
  """Deleted by hand (it stays in the workdir after a run), the lock let a second train.py claim
  the workdir beside the first: both failed their next saves, blaming the disk."""
  with workdir_claimed(tmp_path) as claim:
    (tmp_path / LOCK_FILE).unlink()
    claim.keep()
    assert (f"{tmp_path / LOCK_FILE} was deleted or replaced during this run; claimed again"
            in caplog.text)
    assert (tmp_path / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} on ")
    with pytest.raises(WorkdirInUseError, match="is in use by another train.py"), \
        workdir_claimed(tmp_path):
      pass
    caplog.clear()
    claim.keep()  # its own file: nothing to do
    assert not caplog.text
    (tmp_path / "copy").write_text("an old run's")
    (tmp_path / "copy").replace(tmp_path / LOCK_FILE)  # replaced, by hand or a restore
    claim.keep()
    assert "was deleted or replaced during this run; claimed again" in caplog.text
    assert (tmp_path / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} on ")


def test_a_run_whose_workdir_another_claimed_meanwhile_stops_before_its_save(shapes_data_dir,
                                                                             tmp_path,
                                                                             monkeypatch):
  run, other = tmp_path / "run", contextlib.ExitStack()
  keep = WorkdirClaim.keep

  def taken_over_first(claim):  # what a second train.py does once the lock file is gone
    (run / LOCK_FILE).unlink()
    other.enter_context(workdir_claimed(run))
    keep(claim)

  monkeypatch.setattr(WorkdirClaim, "keep", taken_over_first)
  with other, pytest.raises(WorkdirInUseError) as refused:
    loop.train(tiny_config(shapes_data_dir), run)
  assert re.fullmatch(
      rf"The workdir {run} was claimed by another train\.py \(pid {os.getpid()} on \S+, since "
      rf"[^)]+\) after {run / LOCK_FILE} was deleted or replaced during this run: two runs there "
      r"would save the same checkpoints\. This run stopped before its next save; let the other "
      r"run on, or stop it and rerun this command to resume from the newest checkpoint\.",
      str(refused.value)), str(refused.value)
  assert not list((run / "checkpoints").iterdir())  # nothing saved beside the other run


def test_a_lock_file_that_cannot_be_opened_claims_nothing(tmp_path, caplog):
  (tmp_path / LOCK_FILE).mkdir()  # as another user's file would (PermissionError): a traceback
  with workdir_claimed(tmp_path), workdir_claimed(tmp_path):
    pass
  assert f"Could not lock {tmp_path / LOCK_FILE} (Is a directory)" in caplog.text


def test_a_claim_outlasts_another_starts_check_of_the_lock(tmp_path):
  """check_workdir_free locks the file shared for an instant: a claim (another run's start, or a
  running run's claim again) at that instant was refused, naming an old holder."""
  import fcntl
  import threading
  with workdir_claimed(tmp_path):  # the lock file of an earlier run
    pass
  checking = os.open(tmp_path / LOCK_FILE, os.O_RDWR)
  fcntl.flock(checking, fcntl.LOCK_SH | fcntl.LOCK_NB)
  threading.Timer(0.06, os.close, [checking]).start()
  with workdir_claimed(tmp_path) as claim:
    assert claim.fd is not None
