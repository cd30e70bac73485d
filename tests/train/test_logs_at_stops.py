"""What a run logs when it stops or crashes between two log steps, in process on the tiny config:
no step of the logs is lost (TensorBoard scalars, skipped updates)."""
from __future__ import annotations

import logging

import pytest

from llmimg_jax.data.pipeline import make_iterator
from llmimg_jax.train import checkpoint, loop
from tests.train.test_reliability import _Poisoned
from tests.train.utils import _scalars, tiny_config


def test_a_stop_between_logs_logs_the_steps_since_the_last_one(shapes_data_dir, tmp_path,
                                                                monkeypatch):
  """A SIGTERM/SIGINT stop between two log steps dropped the metrics of the steps since the last
  log: TensorBoard never saw them, nor the warning of their skipped updates."""
  config = tiny_config(shapes_data_dir)
  config.train.steps, config.train.log_every, config.train.ckpt_every = 10, 4, 100
  monkeypatch.setattr(loop, "make_iterator",  # step 6 is skipped (non-finite)
                      lambda *a, **k: _Poisoned(make_iterator(*a, **k), first=6, last=6))
  asked = []

  def reached(watch):
    asked.append(1)
    return len(asked) == 6  # a notice during step 6: stop after it
  monkeypatch.setattr(loop.PreemptionWatch, "reached", reached)
  monkeypatch.setattr(loop.PreemptionWatch, "description", "SIGTERM")
  state = loop.train(config, tmp_path)
  assert int(state.step) == 6
  logdir = tmp_path / "tensorboard"
  assert _scalars(logdir, "train/skipped_updates") == {4: 0.0, 6: 1.0}
  assert _scalars(logdir, "train/finite") == {4: 1.0, 6: 0.5}
  assert checkpoint.make_manager(tmp_path, config).all_steps() == [6]


class _Crashed(Exception):
  pass


class _CrashingAt(_Poisoned):
  """_Poisoned, raising _Crashed for batch `crash` (1-based), as a kill -9 before that step."""

  def __init__(self, it, first: int, last: int, crash: int):
    super().__init__(it, first, last)
    self.crash = crash

  def __next__(self):
    if self.n + 1 == self.crash:
      raise _Crashed
    return super().__next__()


def test_a_crash_after_a_checkpoint_between_logs_loses_no_step_of_the_logs(
    shapes_data_dir, tmp_path, monkeypatch, caplog):
  """A checkpoint at a step that is not a log step (ckpt_every 4, log_every 3) held the metrics
  of the steps since the last log in memory only: after a crash (kill -9, here an error before
  step 5) the rerun resumed after them and no window logged them: step 4's skipped update was
  counted nowhere, without a warning (and a streak of them ending there never stopped a run)."""
  config = tiny_config(shapes_data_dir)
  config.train.steps, config.train.log_every, config.train.ckpt_every = 6, 3, 4
  monkeypatch.setattr(loop, "make_iterator", lambda *a, **k: _CrashingAt(
      make_iterator(*a, **k), first=4, last=4, crash=5))
  with caplog.at_level(logging.WARNING), pytest.raises(_Crashed):
    loop.train(config, tmp_path)
  assert "Step 4: 1 update(s) skipped for non-finite losses or gradients" in caplog.text
  monkeypatch.setattr(loop, "make_iterator", make_iterator)
  assert int(loop.train(config, tmp_path).step) == 6  # resumed at step 4
  logdir = tmp_path / "tensorboard"
  assert _scalars(logdir, "train/skipped_updates") == {3: 0.0, 4: 1.0, 6: 0.0}
  assert _scalars(logdir, "train/finite") == {3: 1.0, 4: 0.0, 6: 1.0}


def test_a_checkpoints_steps_are_on_disk_in_tensorboard_when_it_is_saved(shapes_data_dir,
                                                                       tmp_path, monkeypatch):
  """tensorboardX flushes its event file every 2 minutes: a crash after a checkpoint lost the
  scalars of the steps it holds (and their grids and evaluations), which the run resumed from it
  never logs again, a gap in every curve. What is on disk while the step after the checkpoint
  runs is what a kill -9 there leaves."""
  config = tiny_config(shapes_data_dir)
  config.update_from_flattened_dict({"loss.gp": "none", "loss.diffaugment": "",
                                     "model.attn_resolutions": (), "loss.contrastive_weight": 0.0})
  config.train.update(steps=3, log_every=1, ckpt_every=2, sample_every=2)
  jit_train_step, on_disk = loop.jit_train_step, []

  def snapshot_at_step_3(*args):
    step_fn, calls = jit_train_step(*args), []
    def step(*a):
      calls.append(1)
      if len(calls) == 3:  # after the checkpoint (and the grid) of step 2
        logdir = tmp_path / "tensorboard"
        on_disk.append((_scalars(logdir, "train/d_loss"),
                        _tags(logdir).count("samples")))
      return step_fn(*a)
    return step
  monkeypatch.setattr(loop, "jit_train_step", snapshot_at_step_3)
  loop.train(config, tmp_path)
  (d_loss, grids), = on_disk
  assert sorted(d_loss) == [1, 2] and grids == 1, on_disk


def _tags(logdir) -> list[str]:
  """The tags of every value in the event files (complete records only)."""
  import struct
  from tensorboardX.proto import event_pb2
  tags = []
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    data, i = path.read_bytes(), 0
    while i + 12 <= len(data):
      (size,) = struct.unpack("<Q", data[i:i + 8])
      if i + 12 + size + 4 > len(data):
        break
      tags += [v.tag for v in event_pb2.Event.FromString(data[i + 12:i + 12 + size]).summary.value]
      i += 12 + size + 4
  return tags
