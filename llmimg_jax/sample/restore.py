"""Restores only what sampling needs (EMA generator, text encoder, config) from a training run.

The run's Orbax checkpoints (llmimg_jax.train.checkpoint) hold the whole TrainState. Sampling reads
`ema_params` and `text_params` with Orbax's partial restore and places them with shardings of
*this* process's devices, so a run trained on 8 devices (or a pod) samples in a 1-CPU process.
Optimizer states, the discriminator and the data-iterator state are never read.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from llmimg_jax import cli
from llmimg_jax import output_files
from llmimg_jax.train.checkpoint import brief_error, saved_config
from llmimg_jax.train.restore_errors import is_access_error

log = logging.getLogger(__name__)
PyTree = Any
SAMPLING_KEYS = ("ema_params", "text_params")
# The end of the fix for a run this user may not read, after "run as a user who may ...".
_MAY_READ = ("(the one that trained), or give them read (r) permission on its files and search (x) "
             "on its folders.")
_SAVES = "train.py saves every config.train.ckpt_every steps, at the end and at its best evaluation"


class CheckpointError(RuntimeError):
  """A missing, unknown or unreadable checkpoint; the message names the path and the fix."""


@dataclasses.dataclass
class Restored:
  config: ml_collections.ConfigDict
  ema_params: PyTree
  text_params: PyTree
  step: int
  path: Path  # the step directory restored from


def full_workdir(workdir: str | os.PathLike) -> Path:
  """--workdir with ~ expanded, in full (output_files.in_full: absolute, no '..'), as training
  names it (the paths this module logs and raises with derive from it)."""
  return output_files.in_full(output_files.flag_path(workdir, "--workdir"))


@contextlib.contextmanager
def readable_run(workdir: str | os.PathLike) -> Iterator[None]:
  """A PermissionError reading the run's files inside (Orbax's too) as a CheckpointError naming
  the folder that keeps this user out, or else the unreadable file or folder, with its mode and
  owner: e.g. checkpoints/ made by a trainer whose umask is 077."""
  try:
    yield
  except PermissionError as e:
    if e.filename is None:
      raise
    denied = output_files.closed_folder(e.filename) or Path(e.filename)
    raise CheckpointError(
        f"The run in {full_workdir(workdir)} cannot be read by this user "
        f"({output_files.this_user()}): {denied} ({output_files.mode_and_owner(denied)}) keeps "
        f"them out. Run as a user who may read it {_MAY_READ}") from None


def checkpoint_dir(workdir: str | os.PathLike) -> Path:
  return full_workdir(workdir) / "checkpoints"


def available_steps(workdir: str | os.PathLike) -> dict[int, Path]:
  """Finalized checkpoint steps of a training workdir -> their step directories (sorted)."""
  workdir = full_workdir(workdir)
  if why := output_files.unstorable(workdir, saving=False):  # not called damaged
    raise CheckpointError(f"The run's path {str(workdir)!r} {why}: its checkpoints cannot be "
                          "read there. Move (rename) the run's folder to a path without it, and "
                          "pass that --workdir.")
  if not workdir.is_dir():
    raise CheckpointError(f"Workdir {workdir} does not exist (or is not a directory); pass the "
                          "--workdir a training run (train.py) wrote to.")
  ckpt_dir = checkpoint_dir(workdir)
  paths = ocp.utils.checkpoint_steps_paths(ckpt_dir) if ckpt_dir.is_dir() else []
  # By the names train.py resumes from (Orbax's manager): a copy named 04 is not step 4 (nor
  # would it be read in place of 4 as the folder listing orders them).
  steps = {step: Path(p) for p in paths
           if p.name == str(step := ocp.step.step_from_checkpoint_name(p.name))}
  if not steps:
    refuse_checkpoint_folder(workdir)
    if not ckpt_dir.exists() and (runs := _runs_in(workdir)):  # e.g. --workdir runs
      shown = ", ".join(str(r) for r in runs[:5]) + (", ..." if len(runs) > 5 else "")
      raise CheckpointError(
          f"{workdir} is a folder of {len(runs)} run(s), not a run's workdir (it has no "
          f"checkpoints/); pass one of them as --workdir: {shown}.")
    if not ckpt_dir.exists():  # train.py makes it first: e.g. a T5's folder, or samples/
      raise CheckpointError(
          f"{workdir} is not a training run's workdir: it has no checkpoints/, which train.py "
          f"makes as it starts ({_contents(workdir)}); pass the --workdir of a train.py run.")
    raise CheckpointError(f"No finished checkpoint in {ckpt_dir}: the run has not saved one yet "
                          f"({_SAVES}); train longer or pick another --workdir.")
  return dict(sorted(steps.items()))


def refuse_checkpoint_folder(path: str | os.PathLike, step_flag: bool = True) -> None:
  """A CheckpointError naming the --workdir to pass (and, with `step_flag`, the --step) if `path`
  is a run's checkpoints/ folder, a step folder in it or a folder inside a step (what a user may
  take for the run, or for the checkpoint to sample)."""
  path = full_workdir(path)
  if (inside := _inside_checkpoints(path)) is None:
    return
  run, step = inside
  unfinished = (step_flag and step is None and not ocp.utils.checkpoint_steps_paths(path))
  raise CheckpointError(
      f"{path} is a run's checkpoint folder, not its workdir: pass --workdir {run}"
      + (f" --step {step}." if step is not None and step_flag else ".")
      + (f" It has no finished checkpoint yet ({_SAVES}): wait for the first save, or train "
         "longer." if unfinished else ""))


def _contents(folder: Path) -> str:
  """'it holds a, b, ...' (the first few names, sorted), or 'it is empty'."""
  try:
    names = sorted(c.name for c in folder.iterdir())
  except OSError as e:
    return f"its files cannot be listed: {type(e).__name__}"
  if not names:
    return "it is empty"
  return "it holds " + ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def _runs_in(folder: Path) -> list[Path]:
  """The subfolders of `folder` that are runs with a finished checkpoint (sorted)."""
  try:
    children = sorted(c for c in folder.iterdir() if c.is_dir())
  except OSError:
    return []
  return [c for c in children if (c / "checkpoints").is_dir()
          and ocp.utils.checkpoint_steps_paths(c / "checkpoints")]


def _inside_checkpoints(path: Path) -> tuple[Path, int | None] | None:
  """(the workdir, the step) when `path` is a run's checkpoints/ folder (with a finished step, or
  beside the config.json train.py writes as it starts), a step folder in it or a folder inside a
  step, e.g. its state/ (what a user may take for the checkpoint to sample); None otherwise."""
  path = output_files.in_full(path)
  if path == checkpoint_dir(path.parent) and path.is_dir() and (
      ocp.utils.checkpoint_steps_paths(path) or (path.parent / "config.json").is_file()):
    return path.parent, None
  for step in (path, *path.parents):  # RUN/checkpoints/2, or RUN/checkpoints/2/state/...
    if (step.parent == checkpoint_dir(step.parent.parent) and step.name.isdigit()
        and (step / "state").is_dir()):
      return step.parent.parent, int(step.name)
  return None


def _step_number(step: Any, steps: dict[int, Path]) -> int:
  """`step` as an int; a TypeError naming it for a str, float or bool, which would read as
  'No checkpoint for step 4100; available steps: [4100]'."""
  if (number := cli.as_int(step)) is None:
    raise TypeError(f"Checkpoint step {step!r} is a {type(step).__name__}, not an int; pass an "
                    f"int (available steps: {list(steps)}), or None for the latest.")
  return number


def _config_of(step_dir: Path, workdir: Path) -> ml_collections.ConfigDict:
  """The config saved with the checkpoint; WORKDIR/config.json if the checkpoint lacks it."""
  if (step_dir / "config").is_dir():
    try:
      return ml_collections.ConfigDict(saved_config(step_dir))
    except Exception as e:  # noqa: BLE001 - any failure falls back to config.json, logged
      log.warning("Could not read the config saved in %s (%s); using %s.",
                  step_dir / "config", brief_error(e), workdir / "config.json")
  path = workdir / "config.json"
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except (OSError, ValueError) as e:
    raise CheckpointError(
        f"No readable config for {step_dir}: neither {step_dir / 'config'} nor {path} could be "
        f"read ({type(e).__name__}: {e}). Restore config.json from the training run.") from e


def restore_for_sampling(workdir: str | os.PathLike, step: int | None = None,
                         sharding: jax.sharding.Sharding | None = None) -> Restored:
  """EMA generator and text-encoder params of `step` (default: latest) placed with `sharding`.

  `sharding` defaults to this process's first device; pass e.g. a replicated NamedSharding over
  local devices for data-parallel sampling. The saved shardings are ignored.
  """
  workdir = full_workdir(workdir)
  tries = 0
  while True:  # a training still running deletes its older steps
    steps = available_steps(workdir)
    chosen = max(steps) if step is None else _step_number(step, steps)
    if chosen not in steps:
      raise CheckpointError(f"No checkpoint for step {chosen} in {checkpoint_dir(workdir)}; "
                            f"available steps: {list(steps)}. Pass one of them to --step, or "
                            "omit --step for the latest.")
    try:
      return _restore_step(workdir, chosen, steps, sharding)
    except CheckpointError as e:
      kept = list(available_steps(workdir))
      # Being deleted (Orbax removes the step's folder last) or gone: a newer step saved.
      if steps[chosen].exists() and not (step is None and max(kept) > chosen):
        raise
      if step is not None:
        raise CheckpointError(
            f"The checkpoint of step {chosen} was deleted while it was read (the training in "
            f"{workdir} keeps its newest config.train.keep_checkpoints); pass a step it keeps "
            f"(now {kept}) to --step, or omit --step for the latest.") from e
      if (tries := tries + 1) == 3:
        raise CheckpointError(
            f"The training in {workdir} deleted each of the latest steps as they were read "
            f"({tries} tries; it keeps its newest config.train.keep_checkpoints): rerun, or pass "
            f"a step it keeps (now {kept}) to --step.") from e
      log.info("The checkpoint of step %d was deleted while it was read (the training's "
               "keep_checkpoints); reading the latest again.", chosen)


def _restore_step(workdir: Path, step: int, steps: dict[int, Path],
                  sharding: jax.sharding.Sharding | None) -> Restored:
  step_dir = steps[step]
  config = _config_of(step_dir, workdir)
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  state_dir = step_dir / "state"
  hint = (f"The checkpoint may be corrupt or incomplete; pass an earlier --step (available: "
          f"{list(steps)}) or delete {step_dir} and resume training to rewrite it.")
  handler = ocp.PyTreeCheckpointHandler()  # the handler itself: no step-metadata warnings
  try:
    ema_params, text_params = _restore_subset(handler, epath.Path(state_dir), sharding, hint)
  finally:
    handler.close()
  log.info("Restored %s of step %d from %s.", "/".join(SAMPLING_KEYS), step, step_dir)
  return Restored(config, ema_params, text_params, step, step_dir)


def _restore_subset(handler: ocp.PyTreeCheckpointHandler, state_dir: epath.Path,
                    sharding: jax.sharding.Sharding, hint: str) -> tuple[PyTree, PyTree]:
  """SAMPLING_KEYS of a saved TrainState, each leaf placed with `sharding` (partial restore)."""
  try:
    tree = handler.metadata(state_dir).tree
    missing = [k for k in SAMPLING_KEYS if not isinstance(tree, dict) or k not in tree]
  except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many types; name the path
    raise CheckpointError(f"Could not read the checkpoint metadata in {state_dir} "
                          f"({brief_error(e)}). {_fix(e, hint)}") from e
  if missing:
    raise CheckpointError(f"{state_dir} has no {missing}: it is not a TrainState checkpoint of "
                          "llmimg_jax.train. Pass the --workdir of a train.py run.")
  item = {k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                          tree[k]) for k in SAMPLING_KEYS}
  restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), item)
  try:
    restored = handler.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
    jax.block_until_ready(restored)
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"Could not restore {SAMPLING_KEYS} from {state_dir} "
                          f"({brief_error(e)}). {_fix(e, hint)}") from e
  return restored["ema_params"], restored["text_params"]


def _fix(e: Exception, damaged_hint: str) -> str:
  """What to do about a checkpoint that did not read: `damaged_hint` (an earlier step, or a
  rewrite) only where the error is not a want of access or resources, which deleting it would not
  mend."""
  if isinstance(e, PermissionError) or "PERMISSION_DENIED" in str(e):
    return (f"This user ({output_files.this_user()}) may not read all of its files: run as a user "
            f"who may {_MAY_READ}")
  if is_access_error(e):
    return "Not damage but a want of access or resources: try again once they are back."
  return damaged_hint
