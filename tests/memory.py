"""Host-memory bounds in tests: tracemalloc's peak while a function runs."""
from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def traced_peaks(fn: Callable[[], T], bound: float) -> tuple[T, list[int]]:
  """fn()'s result and tracemalloc's peak bytes while it ran; a peak at or over `bound` is
  measured once more (fn runs again), so a test asserts min(peaks) < bound.

  tracemalloc counts every thread's allocations, and in an xdist worker an earlier test's grain
  prefetch threads and thread pools stay alive: one holding a MB during the measurement tips a
  bound with less room than that. A function that itself needs more is over it both times."""
  peaks = []
  for _ in range(2):
    tracemalloc.start()
    try:
      result = fn()
      peaks.append(tracemalloc.get_traced_memory()[1])
    finally:
      tracemalloc.stop()
    if peaks[-1] < bound:
      break
  return result, peaks
