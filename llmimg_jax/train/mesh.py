"""The data-parallel mesh, arrays that every host holds the same placed on it, and the XLA options
of the programs that run on it."""
from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding

log = logging.getLogger(__name__)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over `devices` (default: every device of every host)."""
  devices = jax.devices() if devices is None else devices
  # Auto axes: shardings propagate from the jit's in/out shardings (classic data parallelism).
  return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def from_every_host(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """`x`, the same on every host, as one global array placed by `sharding`: each device takes
  its slice from its own host's copy (nothing moves between hosts)."""
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def rows_per_call(rows: int, devices: int) -> int:
  """`rows` rounded up to a multiple of the device count (at least one row per device), so that
  a batch of them splits evenly over the mesh's 'data' axis."""
  return max(devices, -(-rows // devices) * devices)


# XLA:CPU hands dots and convolutions to YNNPACK. Its convolutions run the weight gradients of 3x3
# convs several times slower than XLA's own, and forward passes slower too on the 2-core dev VM:
# sampling at 64px by 17-25%, FID's InceptionV3 by half (benchmarks/RESULTS.md). So the GAN's,
# the shapes evaluator's and Inception's programs keep YNNPACK for dots only.
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def _cpu_options_supported() -> bool:
  try:
    jax.jit(lambda x: x + 1, compiler_options=_CPU_OPTIONS).lower(np.float32(0)).compile()
    return True
  except jax.errors.JaxRuntimeError:  # an XLA without this (experimental) option
    log.info("XLA:CPU has no %s; the train step, sampling and the evaluation's networks "
             "compile with the defaults.", list(_CPU_OPTIONS))
    return False


def compiler_options(mesh: jax.sharding.Mesh | None = None) -> dict[str, str]:
  """XLA options for the train step, sampling and the evaluation's networks on `mesh` (None:
  JAX's default device, where a jit without shardings runs): `_CPU_OPTIONS` on CPU where XLA
  knows them, else {}."""
  devices = jax.devices()[:1] if mesh is None else mesh.devices.flat
  on_cpu = all(d.platform == "cpu" for d in devices)
  return dict(_CPU_OPTIONS) if on_cpu and _cpu_options_supported() else {}
