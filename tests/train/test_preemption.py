"""PreemptionWatch's signal handlers (its stops in the loop: test_reliability)."""
from __future__ import annotations

import signal

import pytest

from llmimg_jax.train import preemption


def test_a_handler_python_cannot_reinstall_becomes_the_default_action(monkeypatch):
  """signal.signal returns None for a handler installed outside Python (by the program that
  embeds it), which it cannot put back: the watch leaves the default action there on exit, where
  signal.signal(SIGTERM, None) raised TypeError, out of the run's `with` (and SIGINT stayed the
  watch's)."""
  real = signal.signal
  before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

  def outside_python(sig, handler):  # SIGTERM's handler before the watch: not Python's
    previous = real(sig, handler)
    return None if sig == signal.SIGTERM and previous == before[1] else previous
  monkeypatch.setattr(signal, "signal", outside_python)
  try:
    with preemption.PreemptionWatch(manager=None) as watch:
      assert not watch.synced
      assert signal.getsignal(signal.SIGTERM) == watch._handle  # pylint: disable=protected-access
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) == before[0]
  finally:
    real(signal.SIGINT, before[0])
    real(signal.SIGTERM, before[1])


def test_a_second_ctrl_c_that_python_ignored_still_stops_without_saving():
  """A second Ctrl-C's KeyboardInterrupt raised inside JAX's garbage-collection callback, where
  Python prints and ignores it: the run then saved at the step's end and exited 0."""
  before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  with preemption.PreemptionWatch(manager=None) as watch:
    handler = signal.getsignal(signal.SIGINT)
    handler(signal.SIGINT, None)  # the first: save after this step
    with pytest.raises(KeyboardInterrupt):  # the second, raised where Python ignores it
      handler(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):
      watch.reached()
  assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
