"""Each host's numpy batch -> one global `jax.Array` batch, sharded over the data axis.

jax is imported inside the function: grain's worker processes import the data package and never
need it."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
  import jax


def _to_32_bits(key: str, value: np.ndarray) -> np.ndarray:
  """JAX without x64 would wrap 64-bit integers to 32 bits silently: only exact ones pass."""
  narrow = value.astype(np.int32 if value.dtype.kind == "i" else np.uint32)
  if not np.array_equal(narrow, value):
    bad = value.ravel()[np.flatnonzero(narrow.ravel() != value.ravel())[0]]
    raise ValueError(
        f"batch[{key!r}] holds 64-bit integers that 32 bits cannot hold (e.g. {bad}), and JAX "
        "keeps integers in 32 bits unless jax_enable_x64 is set. Leave it on the host (omit it "
        "from `keys`) or enable jax_enable_x64.")
  return narrow


MODEL_KEYS = ("image", "input_ids", "attention_mask")


def to_global_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh, axis: str = "data",
                    keys: tuple[str, ...] | None = MODEL_KEYS) -> dict[str, Any]:
  """Each host's numpy batch -> global `jax.Array`s sharded over `axis` of `mesh`.

  Only `keys` are moved (default: what the model needs; `index` stays on the host); None moves
  every numeric entry. The global batch concatenates the hosts' batches in process order, so
  every host must pass the same batch size.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if (keys is not None and key not in keys) or value.dtype.kind not in "biuf":
      continue
    if value.dtype.kind in "iu" and value.dtype.itemsize == 8 and not jax.config.jax_enable_x64:
      value = _to_32_bits(key, value)
    if not value.flags.owndata:  # e.g. grain workers' shared memory, which JAX's device_put
      value = value.copy()  # kept alive past close_iterator: reported leaked at every exit
    spec = P(axis, *([None] * (value.ndim - 1)))
    out[key] = jax.make_array_from_process_local_data(NamedSharding(mesh, spec), value)
  return out
