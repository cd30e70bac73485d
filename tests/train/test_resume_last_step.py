"""train() rerun on a run at its last step, in process on the tiny config: nothing set up or
trained, the sample grid and evaluation a kill cut short made from the checkpoint, a SIGTERM
during them heeded at once, a best replaced before the kill deleted, its workdir named in full."""
from __future__ import annotations

import json
import logging
import os
import shutil

import jax
import pytest
from PIL import Image

from llmimg_jax.train import checkpoint
from tests.train.utils import _equal, tiny_config


@pytest.mark.parametrize("best", [{"step": 2, "evaluated": 4}, {"step": 2}],
                         ids=["evaluated", "from_before_evaluated_was_recorded"])
def test_a_run_already_at_its_steps_leaves_the_workdir_and_sets_up_nothing(saved, tmp_path,
                                                                         monkeypatch, caplog, best):
  """Rerun at train.steps it rewrote config.json and set up the in-training evaluator (FID
  reference statistics: minutes at scale) before finding nothing to train. A best.json written
  before "evaluated" was recorded, its best before the last step, made the rerun evaluate again."""
  from llmimg_jax.eval import in_training
  from llmimg_jax.train import loop
  config, _, states, _ = saved
  config.eval.every = 2  # the evaluator would be set up on a run with steps left
  built = []
  monkeypatch.setattr(in_training, "TrainingEvaluator", lambda *a, **k: built.append(a))
  saved_config = tmp_path / "config.json"  # the run's (eval off): this config differs from it
  saved_config.write_text(tiny_config(config.data.data_dir).to_json(indent=2))
  os.utime(saved_config, ns=(1_000_000_000, 1_000_000_000))
  before = saved_config.read_bytes()
  (tmp_path / "samples").mkdir()  # the last step's grid and evaluation were made
  (tmp_path / "samples" / "step_0000004.png").write_bytes(b"png")
  (tmp_path / checkpoint.BEST_FILE).write_text(json.dumps(best))
  with caplog.at_level(logging.WARNING):
    state = loop.train(config, tmp_path)
  assert _equal(jax.device_get(state), jax.device_get(states[4]))
  assert saved_config.read_bytes() == before and saved_config.stat().st_mtime_ns == 1_000_000_000
  assert built == [] and not (tmp_path / "tensorboard").exists()
  assert (f"The run in {tmp_path} is at step 4, at or past config.train.steps=4: nothing to "
          "train; its config.json and checkpoints are left as they are. Raise "
          "--config.train.steps to train further.") in caplog.text
  assert checkpoint.make_manager(tmp_path, config).all_steps() == [2, 4]


def test_the_resume_lines_name_a_relative_workdir_in_full(saved, tmp_path, monkeypatch, caplog):
  """--workdir=..: 'Resumed from' named Orbax's directory with '..' kept, and 'The run in'
  the workdir as typed, unlike the start and end lines (in full)."""
  from llmimg_jax.train import loop
  (tmp_path / "samples").mkdir()  # the last step's grid was made
  (tmp_path / "samples" / "step_0000004.png").write_bytes(b"png")
  (tmp_path / "code").mkdir()
  monkeypatch.chdir(tmp_path / "code")
  with caplog.at_level(logging.INFO, loop.__name__):
    loop.train(saved[0], "..")
  assert caplog.messages[:2] == [
      f"Resumed from {tmp_path / 'checkpoints'} at step 4.",
      f"The run in {tmp_path} is at step 4, at or past config.train.steps=4: nothing to train; "
      "its config.json and checkpoints are left as they are. Raise --config.train.steps to train "
      "further."]


def _stand_in_evaluator(monkeypatch, record) -> list:
  """in_training.TrainingEvaluator replaced by the loop's side of it: each evaluation appends
  record(state, step) to the list returned and writes best.json (best step 2, that step
  evaluated)."""
  from llmimg_jax.eval import in_training
  evaluated = []

  class Evaluator:
    best_step = None

    def __init__(self, models, tokenizer, config, workdir, mesh=None):
      self.best_file = workdir / checkpoint.BEST_FILE

    def __call__(self, state, step, writer):
      evaluated.append(record(state, step))
      self.best_file.write_text(json.dumps({"step": 2, "evaluated": step}))
  monkeypatch.setattr(in_training, "TrainingEvaluator", Evaluator)
  return evaluated


def test_a_kill_during_the_last_steps_grid_and_evaluation_loses_neither(saved, tmp_path,
                                                                         monkeypatch, caplog):
  """The loop saves a step's checkpoint before its sample grid and evaluation: a kill during them
  at the last step lost them for good, since a rerun found nothing to train and ended. A rerun now
  makes them from the checkpoint without training; a kill while it writes the grid leaves none."""
  from llmimg_jax.train import loop, samples
  config, _, states, _ = saved
  config.eval.every = 2
  evaluated = _stand_in_evaluator(
      monkeypatch, lambda state, step: (step, _equal(jax.device_get(state),
                                                     jax.device_get(states[4]))))
  monkeypatch.setattr(loop, "jit_train_step", lambda *a: lambda *b: pytest.fail("trained"))
  captioned_grid = samples.captioned_grid

  class Killed(BaseException):
    pass

  class KilledWhileSaved:  # the grid, whose save is killed half-way through the file
    def __init__(self, *args):
      self.grid = captioned_grid(*args)

    def save(self, out, **kwargs):
      out.write(b"\x89PNG")
      raise Killed
  monkeypatch.setattr(samples, "captioned_grid", KilledWhileSaved)
  grid = tmp_path / "samples" / "step_0000004.png"
  with pytest.raises(Killed):
    loop.train(config, tmp_path)
  assert not grid.exists() and evaluated == []
  monkeypatch.setattr(samples, "captioned_grid", captioned_grid)
  with caplog.at_level(logging.WARNING):
    state = loop.train(config, tmp_path)
  assert ("is at its last step, 4: nothing to train; making the step's sample grid and "
          "evaluation, which a stop cut short.") in caplog.text
  assert _equal(jax.device_get(state), jax.device_get(states[4]))
  assert Image.open(grid).size[0] > 0 and evaluated == [(4, True)]
  assert not (tmp_path / "config.json").exists()
  made = grid.stat().st_mtime_ns
  loop.train(config, tmp_path)  # both made: nothing to do
  assert evaluated == [(4, True)] and grid.stat().st_mtime_ns == made


def _sigterm_during_the_grid(monkeypatch):
  """train() restores without compiling, fails if it trains, and gets a SIGTERM while it renders a
  sample grid; returns the real captioned_grid."""
  import signal
  from llmimg_jax.train import loop, samples
  monkeypatch.setattr(loop, "jit_train_step", lambda *a: lambda *b: pytest.fail("trained"))
  captioned_grid = samples.captioned_grid

  def notice_during_the_grid(*args):
    os.kill(os.getpid(), signal.SIGTERM)
    return captioned_grid(*args)
  monkeypatch.setattr(samples, "captioned_grid", notice_during_the_grid)
  return captioned_grid


def test_a_sigterm_while_a_resumed_run_makes_its_grid_stops_before_compiling(saved, tmp_path,
                                                                             monkeypatch, caplog):
  """A SIGTERM while a resumed run made the grid (or evaluation) a kill had cut short waited for
  them, then for the first step's compilation (minutes at scale) and that step's save, all past a
  preemption's grace period; no step has run since the checkpoint, so the run stops at once."""
  from llmimg_jax.train import loop
  config, _, states, _ = saved
  config.train.steps = 8
  _sigterm_during_the_grid(monkeypatch)
  with caplog.at_level(logging.WARNING):
    state = loop.train(config, tmp_path)
  assert _equal(jax.device_get(state), jax.device_get(states[4]))
  assert (tmp_path / "samples" / "step_0000004.png").exists()
  assert "Stopped by SIGTERM before the first step; rerun the same command" in caplog.text
  assert checkpoint.make_manager(tmp_path, config).all_steps() == [2, 4]


def test_a_sigterm_during_a_resumed_runs_grid_leaves_its_evaluation_to_the_rerun(
    saved, tmp_path, monkeypatch, caplog):
  """README: a notice while a resumed run makes the grid and evaluation a kill cut short stops it
  at once. A SIGTERM during the grid still waited for the evaluation (generating and scoring
  eval.num_samples images: past a preemption's grace period); the rerun makes it."""
  from llmimg_jax.train import loop, samples
  config, _, _, _ = saved
  config.train.steps, config.eval.every = 8, 2
  evaluated = _stand_in_evaluator(monkeypatch, lambda state, step: step)
  captioned_grid = _sigterm_during_the_grid(monkeypatch)
  with caplog.at_level(logging.WARNING):
    loop.train(config, tmp_path)
  assert (tmp_path / "samples" / "step_0000004.png").exists() and evaluated == []
  assert ("Stopped by SIGTERM before the step's evaluation and the first step; rerun the same "
          "command") in caplog.text
  config.train.steps = 4  # also at the last step (nothing to train)
  (tmp_path / "samples" / "step_0000004.png").unlink()
  loop.train(config, tmp_path)
  assert evaluated == []
  monkeypatch.setattr(samples, "captioned_grid", captioned_grid)
  loop.train(config, tmp_path)  # the rerun makes it
  assert evaluated == [4]


def test_a_best_replaced_at_the_last_step_is_deleted_after_a_kill(saved, tmp_path, monkeypatch):
  """The loop deletes the best a new best replaced (unless among the latest) after the new one's
  checkpoint is saved: a kill in between at the last step left it for good, as no save followed,
  beside the keep_checkpoints=1 the run was given."""
  from llmimg_jax.train import loop
  config, _, _, _ = saved
  config.train.keep_checkpoints = 1
  (tmp_path / "samples").mkdir()  # the last step's grid and evaluation were made
  (tmp_path / "samples" / "step_0000004.png").write_bytes(b"png")
  (tmp_path / checkpoint.BEST_FILE).write_text(json.dumps({"step": 4, "former": {"step": 2}}))
  loop.train(config, tmp_path)
  assert checkpoint.make_manager(tmp_path, config).all_steps() == [4]
  config.train.keep_checkpoints = 2  # among the latest: kept
  shutil.copytree(tmp_path / "checkpoints" / "4", tmp_path / "checkpoints" / "2")
  (tmp_path / checkpoint.BEST_FILE).write_text(json.dumps({"step": 4, "former": {"step": 2}}))
  loop.train(config, tmp_path)
  assert checkpoint.make_manager(tmp_path, config).all_steps() == [2, 4]


def test_a_return_or_an_error_before_training_closes_the_input_pipeline(saved, tmp_path,
                                                                        monkeypatch):
  """A rerun with nothing to train, or a resume refused after the restore, left the grain
  iterator open: its worker processes read on until the interpreter exited (a notebook's too), and
  an error left the checkpoint manager open as well."""
  from llmimg_jax.train import loop, resume
  closed = []
  monkeypatch.setattr(loop, "close_iterator", lambda data_iter: closed.append("data"))
  make_manager = checkpoint.make_manager

  def recording_manager(*args, **kwargs):
    manager = make_manager(*args, **kwargs)
    close = manager.close
    monkeypatch.setattr(manager, "close", lambda: (closed.append("manager"), close()))
    return manager

  monkeypatch.setattr(checkpoint, "make_manager", recording_manager)
  (tmp_path / "samples").mkdir()  # the last step's grid was made: nothing to do
  (tmp_path / "samples" / "step_0000004.png").write_bytes(b"png")
  loop.train(saved[0], tmp_path)
  assert closed == ["manager", "data"]
  closed.clear()

  def refused(*args):
    raise OSError("the samples folder cannot be listed")

  monkeypatch.setattr(resume, "unmade", refused)
  with pytest.raises(OSError, match="cannot be listed"):
    loop.train(saved[0], tmp_path)
  assert closed == ["manager", "data"]
