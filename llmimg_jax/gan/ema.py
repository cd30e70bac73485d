"""Exponential moving average of parameters (for the generator used at sampling time)."""
from __future__ import annotations

from typing import Any

import jax

PyTree = Any


def ema_update(ema_params: PyTree, params: PyTree, decay: float | jax.Array) -> PyTree:
  """Returns decay * ema_params + (1 - decay) * params, leaf by leaf (pure; dtypes kept)."""
  return jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype),
                      ema_params, params)
