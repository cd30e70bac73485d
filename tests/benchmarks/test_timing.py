"""benchmarks/timing.xla_flops: XLA's FLOP count of the program that runs, also for a backend whose
own count misses library calls (there: the same function compiled for the CPU, from shapes)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")  # benchmarks.timing imports it

from benchmarks import timing  # noqa: E402


def test_flops_of_a_matmul_on_cpu_and_from_shapes_elsewhere(monkeypatch):
  fn = lambda a, b: jnp.tanh(a) @ b  # noqa: E731
  a, b = jnp.ones((64, 32)), jnp.ones((32, 16))
  compiled = jax.jit(fn).lower(a, b).compile()
  flops = timing.xla_flops(compiled, fn, a, b)
  assert flops >= 2 * 64 * 32 * 16 and flops < 2 * 64 * 32 * 16 + 64 * 32 * 16  # + the tanh
  # On another backend: recompiled for the CPU from shapes, so donated (deleted) args are fine.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  donated = jax.jit(lambda x: x + 1, donate_argnums=0)
  a_gone = jnp.ones((64, 32))
  donated(a_gone)
  assert timing.xla_flops(None, fn, a_gone, np.ones((32, 16), np.float32)) == flops
