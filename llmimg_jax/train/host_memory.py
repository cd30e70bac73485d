"""Keeps XLA:CPU's per-step scratch memory mapped between steps.

XLA:CPU allocates one temporary buffer per execution (501 MB for run.py's 64px GAN step) and
frees it afterwards. glibc serves blocks that large with a fresh mmap and returns them with
munmap, so every step page-faults the whole buffer in again: 123k minor faults and ~0.2 s of
kernel time per 64px step on the 2-core dev VM (benchmarks/RESULTS.md). `reuse_host_memory()`
runs CPU computations on the calling thread (JAX's CPU async dispatch off) and tells glibc to
serve large blocks from that thread's heap and keep freed memory, so the next step reuses the
same pages. The cost: the process keeps its peak host memory, and a CPU computation blocks the
Python thread that launched it (as if every call ended with block_until_ready).
"""
from __future__ import annotations

import ctypes
import logging
import platform

import jax

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


def reuse_host_memory() -> bool:
  """Call once, before JAX's first computation. Returns False (and changes nothing) off glibc or
  when the CPU backend already started (its dispatch mode is fixed when it starts)."""
  from jax._src import xla_bridge  # the one place JAX exposes whether a backend has started
  if platform.libc_ver()[0] != "glibc":
    return False
  if xla_bridge.backends_are_initialized():
    log.warning("reuse_host_memory() called after JAX started its backends; not applied.")
    return False
  libc = ctypes.CDLL("libc.so.6")
  # Large blocks from the heap, not mmap; freed memory stays with the process. (mallopt returns
  # 1 on success; it only rejects out-of-range values.)
  applied = [libc.mallopt(_M_MMAP_MAX, 0), libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX)]
  if not all(applied):
    log.warning("glibc's mallopt refused a host-memory setting (results %s); JAX's async "
                "dispatch stays on.", applied)
    return False
  # Only the main thread's heap can grow to hundreds of MB (other threads' arenas fall back to
  # mmap), so the CPU client runs computations on the calling thread.
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  return True
