"""The data-parallel mesh, and arrays that every host holds the same placed on it."""
from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding


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
