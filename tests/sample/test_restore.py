"""What Sampler.from_workdir reads from a run (restore_for_sampling, text_setup): the EMA of the
latest or a chosen step, the checkpoint's own config, WORKDIR/text; a missing, unknown or damaged
checkpoint and a workdir mistaken for another folder, each named in full with the fix."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from llmimg_jax.sample import CheckpointError, Sampler, available_steps, restore_for_sampling
from llmimg_jax.sample import restore
from llmimg_jax.sample.restore import refuse_checkpoint_folder
from llmimg_jax.sample.sampler import text_setup
from llmimg_jax.train import loop
from llmimg_jax.train.checkpoint import saved_config
from llmimg_jax.train.state import build_text, save_text_files
from tests.sample.utils import one_device_env, save_run
from tests.train.cli_utils import ROOT, as_modes_hold, closed
from tests.train.utils import _equal, tiny_config, tiny_pretrained_t5


def test_restores_ema_of_latest_or_chosen_step_on_local_devices(run, sampler):
  assert sampler.step == 2
  assert _equal(jax.device_get(sampler.ema_params), run.ema[2])
  assert not _equal(jax.device_get(sampler.ema_params), run.g_params)
  leaf = jax.tree.leaves(sampler.ema_params)[0]
  assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8
  one = restore_for_sampling(run.workdir, step=1)  # default: the first local device only
  assert one.step == 1 and _equal(jax.device_get(one.ema_params), run.ema[1])
  assert len(jax.tree.leaves(one.ema_params)[0].sharding.device_set) == 1
  assert one.config.model.resolution == 32


def _restore_error(workdir, **kwargs) -> str:
  with pytest.raises(CheckpointError) as refused:
    restore_for_sampling(workdir, **kwargs)
  return str(refused.value)


def test_a_run_moved_where_orbax_cannot_read_is_not_called_damaged(run, tmp_path):
  """A good run copied to a non-UTF-8 path was 'may be corrupt ...; delete CHECKPOINT' (which
  would destroy it) after a traceback (tests/train/test_workdir.py: train.py refuses such paths)."""
  moved = tmp_path / os.fsdecode(b"moved_\xe9")
  shutil.copytree(run.workdir, moved)
  assert _restore_error(moved) == (
      f"The run's path {str(moved)!r} is not UTF-8, which Orbax's array storage (TensorStore) "
      "cannot name: its checkpoints cannot be read there. Move (rename) the run's folder to a "
      "path without it, and pass that --workdir.")
  shutil.move(moved, wildcards := tmp_path / "exp[1]*?")  # only Orbax's save globs the path
  assert restore_for_sampling(wildcards).step == 2


def test_a_step_the_training_deletes_while_it_is_read_is_not_called_damaged(run, tmp_path,
                                                                             monkeypatch):
  """sample.py beside a training (keep_checkpoints) failed 2 of 6 times: 'may be corrupt or
  incomplete; pass an earlier --step (available: [5]) or delete .../5 and resume training'."""
  saved, live = run.workdir / "checkpoints", tmp_path / "live"
  read, training = restore._restore_subset, {}  # step -> what the training does as it is read

  def training_meanwhile(handler, state_dir, *args):
    if training.get(state_dir.parent.name) == "deletes":  # after its next save
      shutil.rmtree(state_dir.parent)
    elif training.get(state_dir.parent.name) == "saves 3, deletes":  # the folder goes last
      shutil.copytree(saved / "2", live / "checkpoints" / "3")
      shutil.rmtree(state_dir)
    return read(handler, state_dir, *args)

  def steps_saved(*steps: int) -> None:
    shutil.rmtree(live, ignore_errors=True)
    shutil.copytree(run.workdir, live)
    for step in steps:
      shutil.copytree(saved / "2", live / "checkpoints" / str(step), dirs_exist_ok=True)

  monkeypatch.setattr(restore, "_restore_subset", training_meanwhile)
  steps_saved(1, 2)
  training.update({"2": "deletes"})
  assert restore_for_sampling(live).step == 1  # the latest, read again
  steps_saved(1, 2)
  assert _restore_error(live, step=2) == (
      f"The checkpoint of step 2 was deleted while it was read (the training in {live} keeps "
      "its newest config.train.keep_checkpoints); pass a step it keeps (now [1]) to --step, or "
      "omit --step for the latest.")
  steps_saved(1, 2)
  training.update({"2": "saves 3, deletes"})
  assert restore_for_sampling(live).step == 3
  steps_saved(1, 2, 3, 4)
  training.update({"2": "deletes", "3": "deletes", "4": "deletes"})
  assert _restore_error(live) == (
      f"The training in {live} deleted each of the latest steps as they were read (3 tries; it "
      "keeps its newest config.train.keep_checkpoints): rerun, or pass a step it keeps (now "
      "[1]) to --step.")


def test_missing_unknown_and_corrupt_checkpoints_name_the_path(run, tmp_path):
  with pytest.raises(CheckpointError, match=f"{tmp_path / 'nope'} does not exist"):
    restore_for_sampling(tmp_path / "nope")
  (tmp_path / "empty" / "checkpoints").mkdir(parents=True)  # a run that has not saved yet
  with pytest.raises(CheckpointError, match=f"No finished checkpoint in {tmp_path / 'empty'}"):
    restore_for_sampling(tmp_path / "empty")
  with pytest.raises(CheckpointError, match=r"No checkpoint for step 7 .* steps: \[1, 2\]"):
    restore_for_sampling(run.workdir, step=7)

  broken = tmp_path / "broken"
  shutil.copytree(run.workdir, broken)
  state_dir = broken / "checkpoints" / "2" / "state"
  for f in state_dir.rglob("*"):  # truncate every array data file of the latest step
    if f.is_file() and f.parent.name == "d":
      f.write_bytes(f.read_bytes()[:10])
  with pytest.raises(CheckpointError, match=f"Could not (read|restore) .* {state_dir}"):
    restore_for_sampling(broken)
  (state_dir / "_METADATA").unlink()
  with pytest.raises(CheckpointError, match=f"{state_dir}.*--step"):
    restore_for_sampling(broken)
  assert restore_for_sampling(broken, step=1).step == 1  # the earlier step still restores



def test_only_a_damaged_checkpoint_gets_the_advice_to_pass_another_step_or_delete_it():
  """The hint of a checkpoint that did not read: deleting it mends neither want of access nor of
  resources."""
  from llmimg_jax.sample.restore import _fix
  hint = "The checkpoint may be corrupt or incomplete; pass an earlier --step or delete it."
  assert _fix(ValueError("DATA_LOSS: Error reading local file: unexpected end"), hint) == hint
  assert _fix(ValueError("PERMISSION_DENIED: Failed to open: Permission denied"),
              hint).startswith("This user (")
  assert _fix(PermissionError(13, "Permission denied"), hint).startswith("This user (")
  for scarce in (MemoryError(), ValueError("RESOURCE_EXHAUSTED: out of memory"), TimeoutError()):
    assert _fix(scarce, hint) == ("Not damage but a want of access or resources: try again once "
                                  "they are back.")

class _Stopped(Exception):
  pass


def _stop_before_the_step(*args, **kwargs):
  raise _Stopped


def test_a_pretrained_text_run_samples_without_its_t5_directory(tmp_path, monkeypatch):
  """Training copies a pretrained T5's tokenizer and config.json into WORKDIR/text; sampling reads
  them there, so neither the original directory nor the hub is needed (the weights are in the
  checkpoints)."""
  config = tiny_config(tmp_path / "unused_data")
  config.text.checkpoint = tiny_pretrained_t5(tmp_path / "t5")
  tokenizer, t5_config, _ = build_text(config)
  workdir = tmp_path / "run"
  run = save_run(workdir, config)  # checkpoints of steps 1 and 2
  # train() from step 2 to 3 writes WORKDIR/text before its step; the step itself is stopped
  # (no data, nothing compiled): what it wrote is what sampling needs.
  config.train.steps = 3
  monkeypatch.setattr(loop, "make_iterator", lambda *args, **kwargs: None)
  monkeypatch.setattr(loop, "jit_train_step", _stop_before_the_step)
  with pytest.raises(_Stopped):
    loop.train(config, workdir)
  shutil.rmtree(tmp_path / "t5")
  sampler = Sampler.from_workdir(workdir, batch_size=8)
  assert sampler.models.text_encoder.config == t5_config
  prompt = ["a red circle"]
  np.testing.assert_array_equal(sampler.tokenizer(prompt)["input_ids"],
                                tokenizer(prompt)["input_ids"])
  assert _equal(jax.device_get(sampler.ema_params), run.ema[2])
  assert sampler(prompt, seed=0, num_per_prompt=1).shape == (1, 32, 32, 3)
  # A later start from step 0 (no checkpoint yet), maybe on another T5, writes them anew.
  other = dataclasses.replace(t5_config, d_model=16)
  save_text_files(workdir, tokenizer, other)
  assert text_setup(config, workdir)[1] == t5_config  # a resumed run keeps them
  save_text_files(workdir, tokenizer, other, replace=True)
  assert text_setup(config, workdir)[1] == other


def test_a_checkpoints_folder_or_step_folder_names_the_workdir_to_pass(run):
  """--workdir RUN/checkpoints/2 said "the run has not saved one yet ... train longer"; a folder
  inside the step (its state/, which holds the arrays) said it was no run's workdir."""
  ckpt = run.workdir / "checkpoints"
  step = ckpt / "2"
  for inside in (step, step / "state", step / "config", step / "state" / "d"):
    want = re.escape(f"{inside} is a run's checkpoint folder, not its workdir: pass --workdir "
                     f"{run.workdir} --step 2.")
    with pytest.raises(CheckpointError, match=f"^{want}$"):
      available_steps(inside)
  with pytest.raises(CheckpointError, match=rf"pass --workdir {run.workdir}\.$"):
    restore_for_sampling(ckpt)


def test_the_checkpoints_folder_of_a_run_without_a_finished_step_is_named_as_one(tmp_path):
  """--workdir RUN/checkpoints of a run that has not finished a save (none yet, or one under
  way) said "... is not a training run's workdir: it has no checkpoints/ ..."."""
  ckpt = tmp_path / "run" / "checkpoints"
  (ckpt / "2.orbax-checkpoint-tmp-1733443200").mkdir(parents=True)  # a save under way
  (tmp_path / "run" / "config.json").write_text("{}")  # train.py writes it as it starts
  want = (f"{ckpt} is a run's checkpoint folder, not its workdir: pass --workdir "
          f"{tmp_path / 'run'}. It has no finished checkpoint yet (train.py saves every "
          "config.train.ckpt_every steps, at the end and at its best evaluation): wait for the "
          "first save, or train longer.")
  with pytest.raises(CheckpointError, match=f"^{re.escape(want)}$"):
    available_steps(ckpt)
  with pytest.raises(CheckpointError, match=f"^{re.escape(want.split(' It has')[0])}$"):
    refuse_checkpoint_folder(ckpt, step_flag=False)  # evaluate.py --write_stats: the config only
  with pytest.raises(CheckpointError, match=re.escape(
      f"No finished checkpoint in {ckpt}: the run has not saved one yet (train.py saves every "
      "config.train.ckpt_every steps, at the end and at its best evaluation); train longer or "
      "pick another --workdir.")):
    available_steps(tmp_path / "run")


def test_a_folder_of_runs_names_the_runs_to_pass(run, tmp_path):
  """--workdir runs (the README's runs/shapes_quick's parent) said "No finished checkpoint in
  runs/checkpoints: the run has not saved one yet ... train longer"."""
  runs = tmp_path / "runs"
  for name in ("b", "a"):
    shutil.copytree(run.workdir, runs / name)
  (runs / "not_a_run").mkdir()
  with pytest.raises(CheckpointError, match=(
      rf"^{runs} is a folder of 2 run\(s\), not a run's workdir \(it has no checkpoints/\); "
      rf"pass one of them as --workdir: {runs / 'a'}, {runs / 'b'}\.$")):
    available_steps(runs)


def test_a_folder_that_is_no_run_is_named_with_what_it_holds(tmp_path):
  """A folder without checkpoints/ (which train.py makes as it starts), such as a T5's or the
  samples' --out, said "No finished checkpoint in DIR/checkpoints: the run has not saved one yet
  ... train longer"."""
  t5 = tmp_path / "flan-t5-small"
  t5.mkdir()
  for name in ("config.json", "model.safetensors", "spiece.model"):
    (t5 / name).write_text("{}")
  with pytest.raises(CheckpointError, match=re.escape(
      f"{t5} is not a training run's workdir: it has no checkpoints/, which train.py makes as it "
      "starts (it holds config.json, model.safetensors, spiece.model); pass the --workdir of a "
      "train.py run.")):
    available_steps(t5)
  (tmp_path / "new").mkdir()
  with pytest.raises(CheckpointError, match=re.escape("checkpoints/, which train.py makes as it "
                                                      "starts (it is empty); pass")):
    restore_for_sampling(tmp_path / "new")


def test_a_relative_workdir_is_named_in_full(run, tmp_path, monkeypatch, caplog):
  """--workdir=../run: 'Restored ... from', Restored.path and the errors named the checkpoints
  as code/../run/checkpoints (Path.absolute()), where training names its paths in full
  (output_files.in_full, 21facb7)."""
  (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
  (tmp_path / "code").mkdir()
  monkeypatch.chdir(tmp_path / "code")
  workdir = os.path.relpath(run.workdir)  # ../../sample_run0 or the like
  ckpt = run.workdir / "checkpoints"
  with caplog.at_level(logging.INFO, "llmimg_jax.sample.restore"):
    restored = restore_for_sampling(workdir, step=1)
  assert restored.path == ckpt / "1"
  assert [r.getMessage() for r in caplog.records if r.name == "llmimg_jax.sample.restore"] == [
      f"Restored ema_params/text_params of step 1 from {ckpt / '1'}."]
  with pytest.raises(CheckpointError, match=re.escape(f"No checkpoint for step 7 in {ckpt};")):
    restore_for_sampling(workdir, step=7)
  with pytest.raises(CheckpointError, match=re.escape(
      f"No finished checkpoint in {tmp_path / 'empty' / 'checkpoints'}:")):
    available_steps("../empty")
  with pytest.raises(CheckpointError, match=re.escape(
      f"{ckpt / '2'} is a run's checkpoint folder, not its workdir: pass --workdir "
      f"{run.workdir} --step 2.")):
    available_steps(os.path.join(workdir, "checkpoints", "2"))


def test_the_latest_step_is_the_highest_not_the_last_by_name(run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(run.workdir, workdir)
  shutil.copytree(workdir / "checkpoints" / "2", workdir / "checkpoints" / "10")
  assert list(available_steps(workdir)) == [1, 2, 10]
  restored = restore_for_sampling(workdir)
  assert restored.step == 10 and restored.path == workdir / "checkpoints" / "10"
  assert _equal(jax.device_get(restored.ema_params), run.ema[2])  # 10 is a copy of 2


def test_the_checkpoints_own_config_wins_over_config_json(run, tmp_path):
  """WORKDIR/config.json is the latest start's config; a step restores with the config it was
  saved with, and falls back to config.json only when the step has none."""
  workdir = tmp_path / "run"
  shutil.copytree(run.workdir, workdir)
  step_dir = workdir / "checkpoints" / "1"
  own = saved_config(step_dir)
  edited = json.loads((workdir / "config.json").read_text())
  edited["train"]["steps"] = own["train"]["steps"] + 1000
  (workdir / "config.json").write_text(json.dumps(edited))
  assert restore_for_sampling(workdir, step=1).config.to_dict() == own != edited
  shutil.rmtree(step_dir / "config")
  assert restore_for_sampling(workdir, step=1).config.to_dict() == edited


def test_a_relative_workdirs_text_files_are_named_in_full(tmp_path, monkeypatch):
  """--workdir=../run of a run from a pretrained T5: an error reading WORKDIR/text named it as
  ../run/text (text_setup built it from the workdir as typed), not as restore.py names it."""
  config = tiny_config(tmp_path / "unused_data")
  config.text.checkpoint = str(tmp_path / "t5")  # gone: WORKDIR/text is what sampling reads
  (tmp_path / "run" / "text").mkdir(parents=True)
  (tmp_path / "run" / "text" / "config.json").write_text("{")  # and no tokenizer files
  (tmp_path / "code").mkdir()
  monkeypatch.chdir(tmp_path / "code")
  with pytest.raises(FileNotFoundError, match=re.escape(repr(str(tmp_path / "run" / "text")))):
    text_setup(config, "../run")


def test_a_run_without_text_files_and_its_t5_gone_names_the_folder_to_fill(tmp_path):
  """A run trained before WORKDIR/text existed reads its tokenizer and T5 config from
  config.text.checkpoint; with that directory gone, sampling said "T5 checkpoint directory not
  found: ... Pass a directory with config.json and model.safetensors", which sample.py has no
  flag for."""
  config = tiny_config(tmp_path / "unused_data")
  config.text.checkpoint = str(tmp_path / "t5")
  (tmp_path / "run").mkdir()
  with pytest.raises(FileNotFoundError, match=re.escape(
      f"The run's tokenizer and T5 config.json are neither in {tmp_path / 'run' / 'text'} nor in "
      f"its config.text.checkpoint ({str(tmp_path / 't5')!r}: not found): copy that T5's "
      f"config.json and tokenizer files into {tmp_path / 'run' / 'text'}/ (the trained weights "
      "are in the run's checkpoints).")):
    text_setup(config, tmp_path / "run")


def test_a_run_this_user_may_not_read_is_named_with_the_fix_not_as_damage(run, tmp_path):
  """A checkpoints/ folder this user may not enter (a trainer's umask 077) was "[Errno 13]
  Permission denied: PATH"; array files it may not read were "The checkpoint may be corrupt ...
  delete it": advice that loses a good checkpoint."""
  user = as_modes_hold()
  runs = {name: tmp_path / name for name in ("closed", "unreadable")}
  for workdir in runs.values():
    shutil.copytree(run.workdir, workdir)
  arrays = list((runs["unreadable"] / "checkpoints" / "2" / "state" / "d").iterdir())
  for f in arrays:
    f.chmod(0)
  with closed(runs["closed"] / "checkpoints"):
    procs = {name: subprocess.Popen(
        [*user, sys.executable, str(ROOT / "sample.py"), "--workdir", str(workdir), "--out",
         str(tmp_path / f"out_{name}"), "--prompt", "a cat"], env=one_device_env(),
        stderr=subprocess.PIPE, text=True) for name, workdir in runs.items()}
    errors = {name: proc.communicate(timeout=120)[1] for name, proc in procs.items()}
  for f in arrays:
    f.chmod(0o644)
  checkpoints = runs["closed"] / "checkpoints"
  assert re.search(
      re.escape(f"sample.py: error: The run in {runs['closed']} cannot be read by this user (")
      + r"\S+" + re.escape(f"): {checkpoints} (d---------, owner ") + r"\S+" + re.escape(
          ") keeps them out. Run as a user who may read it (the one that trained), or give them "
          "read (r) permission on its files and search (x) on its folders.\n"),
      errors["closed"]), errors["closed"]
  state = runs["unreadable"] / "checkpoints" / "2" / "state"
  assert re.search(
      re.escape(f"sample.py: error: Could not read the checkpoint metadata in {state} (") + ".*"
      + "Permission denied.*" + re.escape("). This user (") + r"\S+" + re.escape(
          ") may not read all of its files: run as a user who may (the one that trained), or "
          "give them read (r) permission on its files and search (x) on its folders.\n"),
      errors["unreadable"]), errors["unreadable"]
  assert "Traceback" not in "".join(errors.values())
  assert not any(tmp_path.glob("out_*"))


def test_steps_are_the_folders_train_py_resumes_from(tmp_path):
  """A step folder copied as 04 was step 4 to sample.py and evaluate.py (train.py resumes from 2,
  then writes its own 4 beside it: which one --step 4 read was the folder listing's order)."""
  for name in ("2", "04", "6"):
    (tmp_path / "checkpoints" / name).mkdir(parents=True)
  assert available_steps(tmp_path) == {2: tmp_path / "checkpoints" / "2",
                                       6: tmp_path / "checkpoints" / "6"}
