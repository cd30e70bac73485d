"""Keeps XLA:CPU's per-step scratch memory mapped between steps.

XLA:CPU allocates one temporary buffer per execution (501 MB for run.py's 64px GAN step) and
frees it afterwards. glibc serves blocks that large with a fresh mmap and returns them with
munmap, so every step page-faults the whole buffer in again: 123k minor faults and ~0.2 s of
kernel time per 64px step on the 2-core dev VM (benchmarks/RESULTS.md). `reuse_host_memory()`
runs CPU computations on the calling thread (JAX's CPU async dispatch off) and, when JAX's default
backend is the CPU, tells glibc to serve large blocks from that thread's heap and keep freed
memory, so the next step reuses the same pages. The cost: the process keeps its peak host memory,
and a CPU computation blocks the Python thread that launched it (as if every call ended with
block_until_ready).
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
  """Call once, after jax.distributed.initialize (if any) and before JAX's first computation; it
  starts JAX's backends. Returns whether glibc now keeps freed memory: False (and nothing
  changed) off glibc or when the backends already started (the CPU client's dispatch mode is
  fixed when it starts), and False, glibc left as it is, when the default backend is not the CPU:
  there the step runs on the accelerator, and keeping every freed host block (input pipeline,
  checkpoints) would only grow the process."""
  from jax._src import xla_bridge  # the one place JAX exposes whether a backend has started
  if platform.libc_ver()[0] != "glibc":
    return False
  if xla_bridge.backends_are_initialized():
    log.warning("reuse_host_memory() called after JAX started its backends; not applied.")
    return False
  # Only the main thread's heap can grow to hundreds of MB (other threads' arenas fall back to
  # mmap), so the CPU client runs computations on the calling thread. Set before the CPU client
  # starts, i.e. before the platform is known; off CPU that client runs next to nothing.
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  if jax.default_backend() != "cpu":  # starts the backends
    return False
  libc = ctypes.CDLL("libc.so.6")
  # Large blocks from the heap, not mmap; freed memory stays with the process. (mallopt returns
  # 1 on success; it only rejects out-of-range values.)
  applied = [libc.mallopt(_M_MMAP_MAX, 0), libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX)]
  if not all(applied):
    log.warning("glibc's mallopt refused a host-memory setting (results %s); JAX's CPU "
                "computations still run on the calling thread.", applied)
    return False
  return True
