"""Orbax checkpoints of the whole run: train state, input-iterator state, config and the PRNG
of the training key, saved together.

Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames it when
complete), so a crash mid-save never leaves a half-written checkpoint that looks finished. A
finished checkpoint damaged later (truncated or deleted files) is detected when restoring:
`restore_latest` falls back to the previous one and moves the bad one aside, never deletes it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint._src.metadata import array_metadata_store  # as in Orbax's default handler

from llmimg_jax.data import host_slices
from llmimg_jax.train import hosts, resume_agree
from llmimg_jax.train.config_values import config_changes, config_values
from llmimg_jax.train.restore_errors import (PRNG_ITEM, brief_error, data_change, is_access_error,
                                             is_mismatch, prng_change, prng_record, prng_switch)

log = logging.getLogger(__name__)

# Orbax splits the writing of a replicated array across its replicas, slicing it with one small
# jitted program per (shape, device): hundreds of compilations (~30 s on CPU) at a process's
# first save of a small model. Only arrays big enough to gain from it are split.
_absl = logging.getLogger("absl")
_level = _absl.level
_absl.setLevel(logging.ERROR)  # not Orbax's "overriding jax.Array" warning
try:
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(
          min_slice_bytes_for_replica_parallel=16 << 20,
          array_metadata_store=array_metadata_store.Store()),
      override=True)
finally:
  _absl.setLevel(_level)


BEST_FILE = "best.json"  # in the workdir: the in-training evaluation's best step (eval/)
EARLIER_BEST = "earlier_best_{step}.json"  # a best of another evaluation (eval/in_training)


def earlier_best_steps(workdir: Path) -> set[int]:
  """The steps of the EARLIER_BEST files in `workdir`: checkpoints kept until those are deleted."""
  prefix, suffix = EARLIER_BEST.split("{step}")
  steps = [p.name.removeprefix(prefix).removesuffix(suffix)
           for p in workdir.glob(EARLIER_BEST.format(step="*"))]
  return {int(step) for step in steps if step.isdecimal()}


def read_best(best_file: Path) -> dict[str, Any] | None:
  """The record in BEST_FILE ({"step": ..., the evaluation's results}); None if there is none
  yet. Raises ValueError for a file that cannot be read, or whose step is no step number."""
  if not best_file.exists():
    return None
  try:
    best = json.loads(best_file.read_text())
    step = best["step"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{type(e).__name__}: {e}") from None
  if isinstance(step, bool) or not isinstance(step, int) or step < 0:
    raise ValueError(f"its step {step!r} is no step number")
  return best


@dataclasses.dataclass
class _KeepBest:
  """An Orbax preservation policy: keep the checkpoints of the steps in WORKDIR/best.json and in
  WORKDIR/earlier_best_*.json."""
  best_file: Path

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    del context
    try:
      best = read_best(self.best_file)
    except ValueError:  # unreadable: keep none (the next evaluation rewrites it)
      best = None
    kept = earlier_best_steps(self.best_file.parent) | ({best["step"]} if best else set())
    return [c.step in kept for c in checkpoints]


def make_manager(workdir: str | Path, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """Keeps the latest config.train.keep_checkpoints checkpoints (None: all) and the best step's."""
  hosts.wait_for_all_hosts("make_manager")  # Orbax's first cross-host sync follows
  workdir = Path(workdir).absolute()
  policies = ocp.checkpoint_managers
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policies.AnyPreservationPolicy([
          policies.LatestN(config.train.keep_checkpoints), _KeepBest(workdir / BEST_FILE)]),
      enable_async_checkpointing=True,
      cleanup_tmp_directories=True,  # leftovers of a save interrupted by a crash
  )
  return ocp.CheckpointManager(workdir / "checkpoints", options=options,
                               item_names=("state", "data", "config", PRNG_ITEM))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any,
         config: ml_collections.ConfigDict) -> bool:
  """Starts an asynchronous save of everything a resumed run needs; the caller picks the steps."""
  items = {"state": ocp.args.StandardSave(state),
           "config": ocp.args.JsonSave(config_values(config)),
           PRNG_ITEM: ocp.args.JsonSave(prng_record())}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**items), force=True)


def drop_former_best(manager: ocp.CheckpointManager, step: int, keep: int | None) -> None:
  """Deletes `step`, the best evaluated step until now, unless among the latest `keep` or the
  best of an earlier evaluation (EARLIER_BEST: a resume evaluated it again). Orbax applies the
  preservation policies when it saves, and the loop saves a step before evaluating it: a best
  replaced at a saved step stayed until the next save (at the end of a run, for good)."""
  steps = sorted(manager.all_steps())
  kept = earlier_best_steps(Path(manager.directory).parent)  # re-evaluated after a resume
  if keep is not None and step in steps[:-keep] and step not in kept:
    manager.wait_until_finished()  # the save of the new best, then one deletion on every host
    manager.delete(step)


def abstract_like(state: Any) -> Any:
  """ShapeDtypeStructs (with shardings) to restore into, from a state or its eval_shape."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      state)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iter: Any = None) -> Any:
  """The state saved at `step`; `data_iter` (if given) is restored in place."""
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  data_dir = Path(manager.directory) / str(step) / "data"
  saved_hosts = host_slices.saved_process_count(data_dir) if data_iter is not None else None
  resliced = None
  if saved_hosts not in (None, jax.process_count()):  # saved by another number of hosts
    resliced = host_slices.resliced_state(data_dir, data_iter.get_state())
  elif data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  if resliced is not None:
    data_iter.set_state(resliced)
    log.info("Resumed the input position saved by %d process(es) on this run's %d.",
             saved_hosts, jax.process_count())
  return restored["state"]


class CorruptCheckpointError(RuntimeError):
  """No checkpoint of the run could be restored; the message names them and the way out."""


class ConfigMismatchError(CorruptCheckpointError):
  """The checkpoints are readable but were saved with a config that builds a different model."""


class CheckpointAccessError(CorruptCheckpointError):
  """A checkpoint could not be read for a reason other than damage (permissions, an unavailable
  mount, memory): the run stops and moves nothing."""


CORRUPT_DIR = "corrupt_checkpoints"  # in the workdir, beside checkpoints/


def _describe(e: BaseException | None) -> str:
  return "failed on another host" if e is None else brief_error(e)


def _move_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  """Moves unreadable step directories to WORKDIR/corrupt_checkpoints/ (kept for inspection)."""
  root = Path(manager.directory)

  def move() -> None:
    for step in steps:
      target = root.parent / CORRUPT_DIR / str(step)
      n = 1
      while target.exists():
        target, n = root.parent / CORRUPT_DIR / f"{step}.{n}", n + 1
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.move(str(root / str(step)), str(target))
      log.warning("Moved the unreadable checkpoint %s to %s.", root / str(step), target)
  hosts.on_host_0(move, "corrupt_moved",
                  f"move unreadable checkpoints to {root.parent / CORRUPT_DIR}",
                  CorruptCheckpointError)
  manager.reload()


def saved_config(step_dir: str | Path) -> dict[str, Any]:
  """The config saved with a checkpoint (its `config` item), given the step's directory."""
  with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
    return checkpointer.restore(Path(step_dir) / "config", args=ocp.args.JsonRestore())


def _config_changes(manager: ocp.CheckpointManager, step: int,
                    config: ml_collections.ConfigDict) -> list[str] | None:
  """'key: saved -> now' for every config value that differs from the one saved at `step`;
  None when the saved config cannot be read."""
  try:
    saved = saved_config(Path(manager.directory) / str(step))
  except Exception:  # noqa: BLE001 - no readable config: nothing to compare
    return None
  return config_changes(saved, config_values(config))


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any, data_iter: Any = None,
                   *, start_fresh_if_corrupt: bool = False,
                   config: ml_collections.ConfigDict | None = None) -> Any | None:
  """The state of the newest checkpoint that restores (`data_iter` restored in place), or None
  when there is none. Checkpoints that fail to restore are logged and moved aside; if none
  restores, raises CorruptCheckpointError unless `start_fresh_if_corrupt`. One that cannot be read
  for want of access or resources (not damage) raises CheckpointAccessError. One (even after
  damaged ones) that does not fit the state's structure or shapes, or the input pipeline's
  settings, or a position of grain workers that this process count cannot resume, or one saved
  under another JAX PRNG (a changed config, host count, code or PRNG, not damage), raises
  ConfigMismatchError without trying older ones
  (naming the values that differ from this run's `config`, if given) and moves nothing. A
  position saved by another number of hosts is resliced for this one (data/host_slices)."""
  steps = sorted(manager.all_steps(), reverse=True)
  resume_agree.check_steps(steps, manager.directory)
  initial_data_state = data_iter.get_state() if data_iter is not None else None
  failed: dict[int, Exception | None] = {}  # None: it failed on another host
  for step in steps:
    # Keys of one shape restore under another PRNG, and the run would go on another random stream.
    switch = prng_switch(Path(manager.directory) / str(step))
    if any(hosts.host_flags(switch is not None)):
      changes = _config_changes(manager, step, config) if config is not None else None
      raise _prng_error(manager, switch or "another host's jax_default_prng_impl is not the "
                        "one they record", changes, "")
    error = None
    try:
      state = restore(manager, step, abstract_state, data_iter)
      jax.block_until_ready(state)
    except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many types; reported below
      error = e.with_traceback(None)  # kept for its type and message, not its frames
    access = is_access_error(error)
    if hosts.failed_hosts(not access):  # an older step would redo training
      raise CheckpointAccessError(
          f"Checkpoint {Path(manager.directory) / str(step)} could not be read "
          f"({_describe(error) if access else 'failed on another host'}), which "
          "is not damage: fix the access to it (file permissions, the mount, free memory) and "
          "rerun the same command. No checkpoint was skipped or moved.")
    if not hosts.failed_hosts(error is None):
      resume_agree.check_resume(step, data_iter, manager.directory)
      if failed:
        _move_aside(manager, list(failed))
        log.warning("Resumed from the previous good checkpoint, step %d, instead of %s.", step,
                    ", ".join(f"step {s}" for s in failed))
      return state
    failed[step] = error
    # Another config, version or host count saved it: an older step that fits would redo
    # training, this one moved aside; the user decides.
    if any(hosts.host_flags(is_mismatch(error))):
      break
    log.warning("Checkpoint %s could not be restored (%s); trying the previous one.",
                Path(manager.directory) / str(step), _describe(error))
  if not failed:
    return None
  if data_iter is not None:  # a failed restore may have set it already
    data_iter.set_state(initial_data_state)
  details = "; ".join(f"step {s}: {_describe(e)}" for s, e in failed.items())
  # One that does not fit (another config or host count), even beside damaged ones or on one host
  # only (another version there): the run is not the one that saved it, so none is moved aside.
  if any(hosts.host_flags(any(is_mismatch(e) for e in failed.values()))):
    raise _mismatch_error(manager, steps, failed, data_iter, config, details)
  if not start_fresh_if_corrupt:
    raise CorruptCheckpointError(
        f"No checkpoint in {manager.directory} could be restored ({details}). If they are "
        "damaged, rerun with --start_fresh_if_corrupt (train.py; start_fresh_if_corrupt=True "
        f"for train()) to train from step 0 (they are moved to {CORRUPT_DIR}/ beside them, not "
        "deleted). If the config changed since they were saved, rerun with the config the run "
        "started with (WORKDIR/config.json holds its values) or pass a new --workdir.")
  _move_aside(manager, list(failed))
  log.warning("No checkpoint could be restored; starting from step 0 as asked "
              "(start_fresh_if_corrupt).")
  return None


def _mismatch_error(manager: ocp.CheckpointManager, steps: list[int],
                    failed: dict[int, Exception | None], data_iter: Any,
                    config: ml_collections.ConfigDict | None, details: str) -> ConfigMismatchError:
  """restore_latest's error for `failed` checkpoints (newest first) that do not fit this run:
  what changed since `steps[0]` was saved, as far as this run can tell, and the way out."""
  # Read on every host, whatever error it saw (hosts may see different ones): Orbax's restore of
  # it waits at a barrier for all of them.
  changes = _config_changes(manager, steps[0], config) if config is not None else None
  # Another host count, not the config: the advice below would send the user looking in vain.
  if any(isinstance(e, host_slices.ProcessCountMismatchError) for e in failed.values()):
    return _host_count_error(manager, steps, failed, data_iter)
  if prng := prng_change(Path(manager.directory) / str(steps[0]) / "state"):
    return _prng_error(manager, prng, changes, details)
  if changes is None:  # nothing to compare with
    cause = "the config or the code that builds the model changed since they were saved"
  elif changes:
    cause = (f"values that differ from the config saved with step {steps[0]}: "
             f"{'; '.join(changes)}. If none of them changes the model or the input pipeline, "
             "the code that builds them did (another version of llmimg_jax)")
  elif data := data_change(failed.values()):
    cause = (f"this run's config equals the saved one, but its data differs: {data}. The "
             "dataset changed since they were saved (e.g. images added to a captioned_folder "
             "and its build redone): restore the build the run used")
  else:
    cause = ("this run's config equals the saved one, so the code that builds the model or "
             "the input pipeline changed (another version of llmimg_jax), or the files saved "
             "with them (e.g. the input-iterator state in STEP/data/) were edited")
  return ConfigMismatchError(
      f"The checkpoints in {manager.directory} do not fit the model or the input pipeline this "
      f"run builds ({cause}). "
      "Rerun with the config (and version) the run started with (WORKDIR/config.json holds "
      "its values), or pass a new --workdir for a new run. The checkpoints were left in place "
      f"({details}).")


def _prng_error(manager: ocp.CheckpointManager, prng: str, changes: list[str] | None,
                details: str) -> ConfigMismatchError:
  also = f" The config differs too: {'; '.join(changes)}." if changes else ""
  return ConfigMismatchError(
      f"The checkpoints in {manager.directory} were saved under another JAX PRNG: {prng}. "
      "Rerun under the one the run started with (JAX_DEFAULT_PRNG_IMPL, or "
      "jax.config.update('jax_default_prng_impl', ...)), or pass a new --workdir for a new "
      f"run.{also} The checkpoints were left in place{f' ({details})' if details else ''}.")


def _host_count_error(manager: ocp.CheckpointManager, steps: list[int],
                      failed: dict[int, Exception | None], data_iter: Any) -> ConfigMismatchError:
  """For checkpoints saved by another number of processes, whose input position this run cannot
  carry over: the count that can, and an older step whose position this count can read."""
  counts = [e for e in failed.values() if isinstance(e, host_slices.ProcessCountMismatchError)]
  other = [f"Step {s} failed for another reason as well: {_describe(e)}." for s, e in
           failed.items() if not isinstance(e, host_slices.ProcessCountMismatchError)]
  untried = {s: Path(manager.directory) / str(s) / "data" for s in steps[len(failed):]}
  if (older := host_slices.first_resliceable(untried, data_iter.get_state())) is not None:
    newer = [str(s) for s in steps if s > older]
    other.append(f"Step {older}'s input position can be carried over to this count: to "
                 f"resume from it instead (redoing the steps after it), move "
                 + (f"step {newer[0]}'s directory" if len(newer) == 1 else
                    f"the directories of steps {', '.join(newer)}") + " aside.")
  return ConfigMismatchError(
      f"The checkpoints in {manager.directory} were saved by a run of {counts[0].saved} "
      f"process(es) and this run has {jax.process_count()}; {counts[0].reason}, so the "
      "input-pipeline position (STEP/data/) cannot be carried over. Resume with "
      f"--num_processes={counts[0].saved} (the devices per process may differ), or pass a "
      "new --workdir for a new run. The checkpoints were left in place."
      + "".join(f" {o}" for o in other))
