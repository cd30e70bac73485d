"""What the hosts of a multi-host run do together: wait for each other, agree, let host 0 act.

Every host calls each function here, in the same order: where jax.process_count() > 1 each is a
barrier or a collective. With one process each is what that process alone sees or does.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

_barriers = itertools.count()


def wait_for_all_hosts(name: str, timeout_s: int = 900) -> None:
  """A barrier of the JAX distributed service (no collective). Hosts reach the first collective
  after different start-up times (imports, data, compilation), and a CPU (gloo) collective gives
  up on a peer after 30 s; this waits for all of them, much longer."""
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  if distributed.global_state.client is not None:
    barrier = f"llmimg_jax_{name}_{next(_barriers)}"  # ids are single-use
    distributed.global_state.client.wait_at_barrier(barrier, timeout_s * 1000)


def gather(row: np.ndarray) -> np.ndarray:
  """Every host's `row`, in process order: [hosts, row size]."""
  if jax.process_count() == 1:
    return np.asarray(row).reshape(1, -1)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(row)).reshape(jax.process_count(), -1)


def host_flags(flag: bool) -> list[bool]:
  """Every host's `flag`, in process order."""
  return [bool(f) for f in gather(np.int32(flag)).ravel()]


def failed_hosts(ok: bool, barrier: str | None = None, timeout_s: int = 900) -> list[int]:
  """The hosts whose `ok` is false, the same list on every host: each checks something alone
  and all stop together if one fails, the others naming it, instead of waiting in the next
  collective until the distributed service aborts them (5 minutes, SIGABRT). `barrier` first
  waits for every host (up to timeout_s), where hosts reach this after minutes of other work."""
  if barrier is not None:
    wait_for_all_hosts(barrier, timeout_s)
  return [i for i, flag in enumerate(host_flags(ok)) if not flag]


def host_0s(value: int) -> int:
  """Host 0's `value` (an int32; a bool as 0 or 1) on every host."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def on_host_0(fn: Callable[[], Any], barrier: str, what: str,
              error: type[Exception] = RuntimeError, timeout_s: int = 900) -> Any:
  """fn() on host 0 while the other hosts wait at `barrier`; fn's result on host 0, else None.
  If fn raises, host 0 raises its error and every other host `error` naming `what`."""
  result, failure = None, None
  if jax.process_index() == 0:
    try:
      result = fn()
    except Exception as e:  # pylint: disable=broad-exception-caught  (raised below)
      failure = e
  if failed_hosts(failure is None, barrier, timeout_s) and failure is None:
    raise error(f"Host 0 could not {what}; its log has the error.")
  if failure is not None:
    raise failure
  return result
