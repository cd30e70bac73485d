"""One DF-GAN downsampling conv (4x4, stride 2, pad 1) on CPU, at run.py's 64px sizes (batch 32):
XLA's strided conv, the im2col + matmul form, and ours (`conv4x4_stride2`: XLA's conv forward
and kernel gradient, the matmul form's input gradient). Forward, forward+backward, and an
MA-GP-style second derivative (gradient w.r.t. kernel and input of |d out / d input|^2).
Median wall ms, compiled with the train step's XLA options.

  python benchmarks/strided_conv.py
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from llmimg_jax import cli
from llmimg_jax.gan import discriminator
from llmimg_jax.train.host_memory import reuse_host_memory
from llmimg_jax.train.mesh import compiler_options

VARIANTS = {"xla strided": discriminator._conv4x4_stride2_direct,
            "matmul": discriminator._conv4x4_stride2_matmul,
            "ours": discriminator.conv4x4_stride2}


def _ms(fn, *args, n: int = 10) -> float:
  compiled = jax.jit(fn, compiler_options=compiler_options()).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times) * 1e3


def print_table(sizes, variants: dict, kernel_size: int, measures: dict) -> None:
  """One row per (batch, size, in, out) of `sizes`: for each variant conv(x, kernel), the median
  ms of each measure(conv) -> f(x, kernel)."""
  for b, size, cin, cout in sizes:
    x = jax.random.normal(jax.random.key(0), (b, size, size, cin))
    kernel = jax.random.normal(jax.random.key(1), (kernel_size, kernel_size, cin, cout))
    kernel /= kernel_size * cin**0.5
    row = [f"{name}: " + "  ".join(f"{m} {_ms(make(conv), x, kernel):6.1f}"
                                   for m, make in measures.items())
           for name, conv in variants.items()]
    print(f"b{b} {size}x{size} {cin}->{cout} | " + " | ".join(row), flush=True)


def _loss(conv):
  return lambda v, k: jnp.sum(jnp.sin(conv(v, k)))


# forward; forward + input gradient; forward + kernel gradient (measures for print_table)
SEPARATE_GRADIENTS = {"fwd": lambda conv: conv,
                      "+dx": lambda conv: jax.grad(_loss(conv), 0),
                      "+dkernel": lambda conv: jax.grad(_loss(conv), 1)}


def _second_order(conv):
  def penalty(v, k):
    return jnp.sum(jax.grad(_loss(conv))(v, k) ** 2)
  return jax.grad(penalty, (0, 1))


def main() -> None:
  argparse.ArgumentParser(  # no options; --help prints the docstring
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
  reuse_host_memory()  # as train.py: XLA's scratch buffers stay mapped between calls
  print_table([(32, 64, 32, 64), (32, 32, 64, 128), (32, 16, 128, 256), (32, 8, 256, 256)],
              VARIANTS, 4, {"fwd": lambda conv: conv,
                            "fwd+bwd": lambda conv: jax.grad(_loss(conv), (0, 1)),
                            "2nd order": _second_order})


if __name__ == "__main__":
  with cli.ends_on_signal("benchmarks/strided_conv.py",
                          "the table was not printed: rerun the command."):
    main()
