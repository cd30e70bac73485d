"""A resumed run starts at the input position saved with its step, on every host alike.

Each host lists the checkpoints itself (Orbax reads the directory on every host) and restores
its own input position, STEP/data/process_I-of-N.json; `restore_latest` checks only that every
host restored some step. A position file from another step (copied or edited), or on several
hosts a host that sees another step list (a filesystem that shows a new step directory late),
would otherwise train on: the batches are not the ones of the step the run is at, or a host runs
another number of steps and the others wait for it in a collective until JAX's timeouts abort
them. The loop reads one batch per step, so a position is of as many batches as its step.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import jax
import numpy as np

from llmimg_jax.data import host_slices


class ResumeDisagreesError(RuntimeError):
  """A run would resume at an input position of another step, or its hosts at different steps or
  input positions."""


def _position(data_iter: Any) -> tuple[int, int]:
  """(a fingerprint of grain's position, batches read or -1): equal on every host at the same
  point of the run, as each host's HostSliceSampler counts its own rows alike."""
  if data_iter is None:
    return 0, -1
  values = json.loads(data_iter.get_state())
  seen = {str(k): int(v) for k, v in values.get("last_seen_indices", {}).items()}
  where = json.dumps([seen, values.get("last_worker_index")], sort_keys=True)
  return zlib.crc32(where.encode()) & 0x7FFFFFFF, _batches_read(values, seen)


def _batches_read(values: dict, seen: dict[str, int]) -> int:
  """Batches a HostSliceSampler iterator has returned, from grain's state; -1 if unknown.

  Worker w of W (W = 1 without workers) reads sampler positions w, w + W, ..., batching its
  own: its last position seen, initially w - W, counts its rows.
  """
  rows = host_slices.batch_size_per_host(values)
  workers = max(int(values.get("worker_count", 0)), 1)
  if not rows or sorted(seen) != sorted(str(w) for w in range(workers)):
    return -1
  total = 0
  for w in range(workers):
    done, rest = divmod((seen[str(w)] - w) // workers + 1, rows)
    if rest or done < 0:  # not at the end of a batch: not a position this code saves
      return -1
    total += done
  return total


def _gather(row: np.ndarray) -> np.ndarray:
  """Every host's `row`, in process order (a collective: every host must call it)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(row)).reshape(jax.process_count(), -1)


def _describe(step: int, batches: int) -> str:
  return f"step {step}" + (f" with the input position of {batches} batches" if batches >= 0
                           else "")


def check_resume(step: int, data_iter: Any, checkpoints: str | Path) -> None:
  """Raises ResumeDisagreesError (on every host) if a host's restored input position is of
  another number of batches than `step`, or if any host resumed at another step or input
  position than host 0."""
  fingerprint, batches = _position(data_iter)
  row = np.asarray([step, fingerprint, batches], np.int32)
  rows = _gather(row) if jax.process_count() > 1 else row[None]
  agree = (rows == rows[0]).all()
  if agree and all(b < 0 or b == s for s, _, b in rows):
    return
  if agree:
    raise ResumeDisagreesError(
        f"Checkpoint {Path(checkpoints) / str(step)} is at step {step}, but the input position "
        f"restored with it (STEP/data/process_I-of-N.json) is after {batches} batches; the loop "
        "reads one batch per step, so it is the position of another step (the file was copied "
        "or edited). Restore STEP/data/ as it was saved, or move the step's directory aside to "
        "resume from the one before. Nothing was trained.")
  hosts = "; ".join(f"host {i}: {_describe(int(s), int(b))}"
                    + ("" if f == rows[0][1] else " (another position than host 0's)")
                    for i, (s, f, b) in enumerate(rows))
  raise ResumeDisagreesError(
      f"The hosts resumed from {checkpoints} at different points ({hosts}). Every host lists the "
      "checkpoints and restores its own input position (STEP/data/process_I-of-N.json) itself: "
      "a step directory some hosts do not see yet (rerun once every host lists the same steps "
      "in that folder) or a position file of another step (restore STEP/data/ as it was saved, "
      "or move the newest step's directory aside to resume from the one before) makes them "
      "differ. Nothing was trained.")
