"""SIGTERM/SIGINT -> "finish this step, save, stop", at the same step on every host.

Multi-process runs (jax.distributed.initialize) use JAX's preemption sync manager, which owns
SIGTERM: a notice on any host makes every host agree on the next safe step, and Orbax's
`CheckpointManager.reached_preemption(step)` turns True there on all of them. SIGINT is forwarded
to it as a SIGTERM. A single process has no sync manager; a plain handler sets a flag. A second
SIGINT interrupts at once (KeyboardInterrupt).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def sync_manager_active() -> bool:
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  state = distributed.global_state
  return state.client is not None and state.preemption_sync_manager is not None


class PreemptionWatch:
  """Use as a context manager around the loop; ask `reached()` after every step."""

  def __init__(self, manager: ocp.CheckpointManager):
    self.manager = manager
    self.signal: str | None = None  # the signal received (this process)
    self.finishing = False  # set after the last step: a signal then waits for the last save
    self.interrupted = False  # a second Ctrl-C: stop without saving
    self.synced = sync_manager_active()
    # signal.signal's previous handlers: a function, SIG_DFL/SIG_IGN, or None for one installed
    # outside Python (by a program that embeds it), which Python cannot install again.
    self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
    self._steps = 0  # steps of this process (every host resumes at the same step)

  def __enter__(self) -> PreemptionWatch:
    if self.synced:  # Orbax's save (every host) and its finalize thread (host 0) ask JAX's sync
      # manager with the checkpoint's step number, which replaces this process's count there: a
      # notice then agreed on that number + 1, which a resumed run's count reaches only `start`
      # steps later. Only `reached` asks it while the watch is on.
      self._ask = self.manager.reached_preemption
      self.manager.reached_preemption = lambda step: False
    if threading.current_thread() is not threading.main_thread():
      log.warning("train() runs outside the main thread: SIGTERM/SIGINT will not save first.")
      return self
    if not self.synced and jax.process_count() > 1:
      log.warning("JAX's preemption service is off (jax_enable_preemption_service): a SIGTERM "
                  "or SIGINT stops only the host that gets it, without an agreed step.")
    signals = [signal.SIGINT] if self.synced else [signal.SIGTERM, signal.SIGINT]
    for sig in signals:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self.synced:
      del self.manager.reached_preemption  # Orbax's own method again
    for sig, handler in self._previous.items():
      signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: TypeError
    self._previous.clear()

  def _handle(self, signum: int, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.signal == "SIGINT" and signum == signal.SIGINT:
      # A second Ctrl-C: stop now, without the save. Python ignores the KeyboardInterrupt where
      # the handler runs inside a callback (JAX's garbage-collection hook): reached() raises it
      # again at the step's end, not saving and exiting 0.
      self.interrupted = True
      raise KeyboardInterrupt
    self.signal = name
    if self.finishing:
      log.warning("%s received while the last checkpoint is written: stopping when it is "
                  "complete (Ctrl-C again to stop without it).", name)
    else:
      log.warning("%s received: saving a checkpoint after the current step, then stopping "
                  "(Ctrl-C again to stop without saving).", name)
    if self.synced and signum == signal.SIGINT:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption notifier agrees on a step

  def reached(self) -> bool:
    """True at the step where this run should save and stop (the same step on every host)."""
    if self.interrupted:
      raise KeyboardInterrupt
    self._steps += 1
    if self.synced:  # JAX's sync manager counts from this process's start: a notice before a
      # resumed run's first step agrees on step 1, which the run's own step number never equals.
      return self._ask(self._steps)
    return self.signal is not None

  @property
  def description(self) -> str:
    return self.signal or "a preemption notice"
