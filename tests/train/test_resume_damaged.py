"""Resuming from damaged, unreadable or half-written checkpoints, in process on the tiny config:
the previous good step, a stop naming the damage (or a fresh start when asked), and a checkpoint
that cannot be read now (access, resources) told from damage."""
from __future__ import annotations

import logging
import shutil

import jax
import pytest

from llmimg_jax.train import checkpoint, restore_errors
from tests.train.utils import _damage, _equal, _fresh


@pytest.mark.parametrize("how", ["truncated", "half_deleted", "array_data_deleted",
                                 "data_state_deleted"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(saved, tmp_path, how, caplog):
  config, tokenizer, states, data = saved
  _damage(tmp_path / "checkpoints" / "4", how)
  manager, it = _fresh(config, tokenizer, tmp_path)
  with caplog.at_level(logging.WARNING):
    restored = checkpoint.restore_latest(manager, checkpoint.abstract_like(states[2]), it)
  assert _equal(jax.device_get(restored), jax.device_get(states[2]))
  assert it.get_state() == data[2]  # the input pipeline resumes where step 2 left it
  assert f"{tmp_path / 'checkpoints' / '4'} could not be restored" in caplog.text
  assert "previous good checkpoint, step 2" in caplog.text
  assert manager.all_steps() == [2]
  assert (tmp_path / checkpoint.CORRUPT_DIR / "4" / "state").is_dir()  # kept, not deleted


def test_no_readable_checkpoint_stops_unless_asked_to_start_fresh(saved, tmp_path):
  config, tokenizer, states, data = saved
  for step in (2, 4):
    _damage(tmp_path / "checkpoints" / str(step), "truncated")
  manager, it = _fresh(config, tokenizer, tmp_path)
  abstract = checkpoint.abstract_like(states[2])
  with pytest.raises(checkpoint.CorruptCheckpointError,
                     match=r"No checkpoint in .* could be restored \(step 4: .*; step 2: .*"
                           r"--start_fresh_if_corrupt.*rerun with the config the run started "
                           r"with") as error:
    checkpoint.restore_latest(manager, abstract, it, config=config)  # as train() calls it
  assert not isinstance(error.value, checkpoint.ConfigMismatchError)  # same config: damage
  assert sorted(manager.all_steps()) == [2, 4]  # untouched
  assert checkpoint.restore_latest(manager, abstract, it, start_fresh_if_corrupt=True) is None
  assert manager.all_steps() == [] and it.get_state() == data[0]
  assert sorted(p.name for p in (tmp_path / checkpoint.CORRUPT_DIR).iterdir()) == ["2", "4"]


def test_access_and_resource_errors_are_told_from_damage():
  unavailable = RuntimeError("restore failed")
  unavailable.__cause__ = ValueError("UNAVAILABLE: Connection reset by peer")  # a network mount
  for error in (PermissionError(13, "Permission denied"), MemoryError(), TimeoutError(),
                ValueError('PERMISSION_DENIED: Error reading "d/0.0" in OCDBT database'),
                ValueError("RESOURCE_EXHAUSTED: out of memory"), unavailable):
    assert restore_errors.is_access_error(error), error
  for error in (ValueError('NOT_FOUND: Error reading "d/0.0" in OCDBT database'),  # deleted
                ValueError("DATA_LOSS: Unexpected end of file"), FileNotFoundError(2, "gone"),
                ValueError("Expecting property name enclosed in double quotes"), None):
    assert not restore_errors.is_access_error(error), error


@pytest.mark.parametrize("error", [
    PermissionError(13, "Permission denied"),
    ValueError('PERMISSION_DENIED: Error reading "g_params.conv/0.0" in OCDBT database')])
def test_a_checkpoint_that_cannot_be_read_now_stops_the_run_and_stays(saved, tmp_path,
                                                                       monkeypatch, error):
  """Access or resources, not damage: no fallback to an older step (its training would be done
  again), nothing moved aside, not even with start_fresh_if_corrupt."""
  config, tokenizer, states, _ = saved
  restore = checkpoint.restore
  def unreadable_4(manager, step, *args):
    if step == 4:
      raise error
    return restore(manager, step, *args)
  monkeypatch.setattr(checkpoint, "restore", unreadable_4)
  manager, it = _fresh(config, tokenizer, tmp_path)
  with pytest.raises(checkpoint.CheckpointAccessError,
                     match=rf"{tmp_path / 'checkpoints' / '4'} could not be read "
                           rf"\({type(error).__name__}.*\), which is not damage"):
    checkpoint.restore_latest(manager, checkpoint.abstract_like(states[2]), it,
                              start_fresh_if_corrupt=True)
  assert sorted(manager.all_steps()) == [2, 4]
  assert not (tmp_path / checkpoint.CORRUPT_DIR).exists()


def test_interrupted_save_is_never_taken_for_a_checkpoint(saved, tmp_path):
  """Orbax writes a step into '<step>.orbax-checkpoint-tmp-*' and renames it when complete; a
  crash mid-save leaves only such a directory, which is ignored and cleaned up."""
  config, tokenizer, states, _ = saved
  ckpt_dir = tmp_path / "checkpoints"
  partial = ckpt_dir / "6.orbax-checkpoint-tmp-1764350000000000"
  shutil.copytree(ckpt_dir / "4", partial)
  _damage(partial, "half_deleted")
  manager, it = _fresh(config, tokenizer, tmp_path)
  assert sorted(manager.all_steps()) == [2, 4]
  restored = checkpoint.restore_latest(manager, checkpoint.abstract_like(states[4]), it)
  assert int(restored.step) == 4 and not partial.exists()
