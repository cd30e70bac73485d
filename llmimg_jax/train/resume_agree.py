"""Every host of a multi-host run resumes at the same step and the same input position.

Each host lists the checkpoints itself (Orbax reads the directory on every host) and restores
its own input position, STEP/data/process_I-of-N.json; `restore_latest` checks only that every
host restored some step. A host that sees another step list (a filesystem that shows a new step
directory late) or a position file from another step (copied or edited) would otherwise train
on: its batches are not the ones of the step it is at, or it runs another number of steps and
the others wait for it in a collective until JAX's timeouts abort them.
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
  """The hosts of a multi-host run resumed at different steps or input positions."""


def _position(data_iter: Any) -> tuple[int, int]:
  """(a fingerprint of grain's position, batches read or -1): equal on every host at the same
  point of the run, as each host's HostSliceSampler counts its own rows alike."""
  if data_iter is None:
    return 0, -1
  values = json.loads(data_iter.get_state())
  seen = {str(k): int(v) for k, v in values.get("last_seen_indices", {}).items()}
  where = json.dumps([seen, values.get("last_worker_index")], sort_keys=True)
  rows = host_slices.batch_size_per_host(values)
  batches = -1
  if rows and int(values.get("worker_count", 0)) == 0 and list(seen) == ["0"]:
    batches = (seen["0"] + 1) // rows
  return zlib.crc32(where.encode()) & 0x7FFFFFFF, batches


def _gather(row: np.ndarray) -> np.ndarray:
  """Every host's `row`, in process order (a collective: every host must call it)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(row)).reshape(jax.process_count(), -1)


def _describe(step: int, batches: int) -> str:
  return f"step {step}" + (f" with the input position of {batches} batches" if batches >= 0
                           else "")


def check_hosts_agree(step: int, data_iter: Any, checkpoints: str | Path) -> None:
  """Raises ResumeDisagreesError on every host if any host resumed at another step or input
  position than host 0 (a no-op on one host)."""
  if jax.process_count() == 1:
    return
  fingerprint, batches = _position(data_iter)
  rows = _gather(np.asarray([step, fingerprint, batches], np.int32))
  if (rows == rows[0]).all():
    return
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
