"""Winograd 3x3 convolutions in plain JAX against XLA's conv on CPU, at the 3x3 layers of run.py's
64px step (batch 16: the step's batch chunk on two cores). Forward, forward + input gradient,
forward + kernel gradient; median wall ms with the train step's XLA options.

F(m, 3) computes each m x m output tile from an (m + 2)^2 input tile with (m + 2)^2 multiplies
per channel pair instead of 9 m^2: 2.25x fewer for F(2, 3), 4x for F(4, 3) (Lavin & Gray 2015).
The transforms are strided slices and adds that XLA fuses; autodiff of them gives the Winograd
form of both gradients. The result (benchmarks/RESULTS.md): the transforms, memory-bound, cost
more than the multiplies saved at every layer, so the train step keeps XLA's convolutions.

  python benchmarks/winograd_conv.py
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.strided_conv import SEPARATE_GRADIENTS, print_table  # noqa: E402
from llmimg_jax import cli  # noqa: E402
from llmimg_jax.gan.layers import conv2d  # noqa: E402
from llmimg_jax.train.host_memory import reuse_host_memory  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Winograd:
  """F(m, 3): input transform B^T [a, a], kernel transform G [a, 3], output transform A^T
  [m, a], with tile size a = m + 2."""
  m: int
  bt: tuple
  g: tuple
  at: tuple


F23 = Winograd(2, bt=((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
               g=((1, 0, 0), (.5, .5, .5), (.5, -.5, .5), (0, 0, 1)),
               at=((1, 1, 1, 0), (0, 1, -1, -1)))
F43 = Winograd(4, bt=((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
                      (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
               g=((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
                  (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
               at=((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0),
                   (0, 1, -1, 8, -8, 1)))


def _combine(coefficients, parts):
  """sum(c * p) over the nonzero coefficients, without multiplying by +-1."""
  terms = [p if c == 1 else -p if c == -1 else c * p for c, p in zip(coefficients, parts) if c]
  return sum(terms[1:], terms[0])


def winograd_conv3x3(x: jax.Array, kernel: jax.Array, f: Winograd = F23) -> jax.Array:
  """conv2d(x, kernel) (3x3, SAME) for x [b, h, w, in], kernel [3, 3, in, out], as F(m, 3)."""
  b, h, w, cin = x.shape
  cout = kernel.shape[-1]
  m, a = f.m, len(f.bt)
  th, tw = -(-h // m), -(-w // m)  # tiles per axis
  # Tile (i, j) reads padded rows m*i .. m*i + a - 1 (and columns likewise).
  xp = jnp.pad(x, ((0, 0), (1, m * th + 1 - h), (1, m * tw + 1 - w), (0, 0)))
  rows = [xp[:, r:r + m * (th - 1) + 1:m] for r in range(a)]  # a x [b, th, wp, in]
  v_rows = [_combine(f.bt[r], rows) for r in range(a)]
  v = []
  for vr in v_rows:
    cols = [vr[:, :, c:c + m * (tw - 1) + 1:m] for c in range(a)]  # a x [b, th, tw, in]
    v += [_combine(f.bt[s], cols) for s in range(a)]
  v = jnp.stack(v).reshape(a * a, b * th * tw, cin)  # [a*a, tiles, in]
  g = jnp.asarray(f.g, x.dtype)
  u = jnp.einsum("ik,klco,jl->ijco", g, kernel, g).reshape(a * a, cin, cout)  # [a*a, in, out]
  prod = jnp.einsum("tpc,tco->tpo", v, u).reshape(a, a, b, th, tw, cout)
  y_rows = [_combine(f.at[r], list(prod)) for r in range(m)]  # m x [a, b, th, tw, out]
  y = jnp.stack([jnp.stack([_combine(f.at[s], list(yr)) for s in range(m)]) for yr in y_rows])
  y = y.transpose(2, 3, 0, 4, 1, 5).reshape(b, m * th, m * tw, cout)  # [b, th, r, tw, s, out]
  return y[:, :h, :w]


VARIANTS = {"xla": conv2d,
            "F(2,3)": lambda x, k: winograd_conv3x3(x, k, F23),
            "F(4,3)": lambda x, k: winograd_conv3x3(x, k, F43)}


def main() -> None:
  argparse.ArgumentParser(  # no options; --help prints the docstring
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
  reuse_host_memory()  # as train.py: XLA's scratch buffers stay mapped between calls
  print_table([(16, 64, 32, 32), (16, 32, 64, 64), (16, 16, 128, 128), (16, 8, 256, 256)],
              VARIANTS, 3, SEPARATE_GRADIENTS)


if __name__ == "__main__":
  with cli.ends_on_signal("benchmarks/winograd_conv.py",
                          "the table was not printed: rerun the command."):
    main()
