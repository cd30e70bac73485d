"""Orbax checkpoints of the whole run: train state, input-iterator state and config, saved together.

Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames it when
complete), so a crash mid-save never leaves a half-written checkpoint that looks finished.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def make_manager(workdir: str | Path, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.train.keep_checkpoints,
      enable_async_checkpointing=True,
      cleanup_tmp_directories=True,  # leftovers of a save interrupted by a crash
  )
  return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options,
                               item_names=("state", "data", "config"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any,
         config: ml_collections.ConfigDict) -> bool:
  """Starts an asynchronous save of everything a resumed run needs; the caller picks the steps."""
  items = {"state": ocp.args.StandardSave(state),
           "config": ocp.args.JsonSave(config.to_dict())}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**items), force=True)


def abstract_like(state: Any) -> Any:
  """ShapeDtypeStructs (with shardings) to restore into, from a state or its eval_shape."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      state)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iter: Any = None) -> Any:
  """The state saved at `step`; `data_iter` (if given) is restored in place."""
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored["state"]

