"""A resumed run starts at the input position saved with its step, on every host alike.

Each host lists the checkpoints itself (Orbax reads the directory on every host) and restores
its own input position, STEP/data/process_I-of-N.json. A host that sees another step list (a
filesystem that shows a new step directory late) would restore another step, and a position file
from another step (copied or edited) would put the batches out of step with the run: a run would
train on other batches, or a host would run another number of steps while the others wait for it
in a collective until JAX's timeouts abort them. So the hosts compare their step lists before
restoring (`check_steps`) and their positions after (`check_resume`). The loop reads one batch
per step, so a position is of as many batches as its step.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import jax
import numpy as np

from llmimg_jax.data import host_slices
from llmimg_jax.train import hosts


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
  batches = host_slices.batches_read(values)
  return zlib.crc32(where.encode()) & 0x7FFFFFFF, -1 if batches is None else batches


def _describe(step: int, batches: int) -> str:
  return f"step {step}" + (f" with the input position of {batches} batches" if batches >= 0
                           else "")


def check_steps(steps: list[int], checkpoints: str | Path) -> None:
  """Raises ResumeDisagreesError (on every host) if the hosts list different checkpoint steps.

  restore_latest then walks the same steps on every host, each step's collectives paired with
  the same step's on the other hosts."""
  if jax.process_count() == 1:
    return
  listed = json.dumps(sorted(steps)).encode()
  rows = hosts.gather(np.asarray([len(steps), max(steps, default=-1),
                                 zlib.crc32(listed) & 0x7FFFFFFF], np.int32))
  if (rows == rows[0]).all():
    return
  listings = "; ".join(f"host {i}: {n} step{'' if n == 1 else 's'}"
                       + (f", the newest {newest}" if n else "")
                       for i, (n, newest, _) in enumerate(rows))
  raise ResumeDisagreesError(
      f"The hosts list different checkpoints in {checkpoints} ({listings}). Every host lists that "
      "folder itself, and a filesystem that shows a new step directory to some hosts later than "
      "to others makes them differ: rerun once every host lists the same steps there. Nothing "
      "was restored or trained.")


def check_resume(step: int, data_iter: Any, checkpoints: str | Path) -> None:
  """Raises ResumeDisagreesError (on every host) if a host's restored input position is of
  another number of batches than `step`, or if any host resumed at another step or input
  position than host 0 (after check_steps, another position only)."""
  fingerprint, batches = _position(data_iter)
  row = np.asarray([step, fingerprint, batches], np.int32)
  rows = hosts.gather(row)
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
  points = "; ".join(f"host {i}: {_describe(int(s), int(b))}"
                     + ("" if f == rows[0][1] else " (another position than host 0's)")
                     for i, (s, f, b) in enumerate(rows))
  raise ResumeDisagreesError(
      f"The hosts resumed from {checkpoints} at different points ({points}). Every host restores "
      "its own input position (STEP/data/process_I-of-N.json): a position file of another step "
      "makes them differ. Restore STEP/data/ as it was saved, or move the step's directory aside "
      "to resume from the one before. Nothing was trained.")
