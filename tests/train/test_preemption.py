"""PreemptionWatch's signal handlers (its stops in the loop: test_reliability)."""
from __future__ import annotations

import signal

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
