"""One DF-GAN downsampling conv (4x4, stride 2, pad 1) on CPU, at run.py's 64px sizes (batch 32):
XLA's strided conv, the im2col + matmul form, and ours (`conv4x4_stride2`: XLA's conv forward
and kernel gradient, the matmul form's input gradient). Forward, forward+backward, and an
MA-GP-style second derivative (gradient w.r.t. kernel and input of |d out / d input|^2).
Median wall ms, compiled with the train step's XLA options.

  python benchmarks/strided_conv.py
"""
from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from llmimg_jax.gan import discriminator
from llmimg_jax.train import loop

VARIANTS = {"xla strided": discriminator._conv4x4_stride2_direct,
            "matmul": discriminator._conv4x4_stride2_matmul,
            "ours": discriminator.conv4x4_stride2}


def _ms(fn, *args, n: int = 10) -> float:
  options = loop.compiler_options(loop.make_mesh(jax.devices()[:1]))
  compiled = jax.jit(fn, compiler_options=options).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times) * 1e3


def main() -> None:
  for b, size, cin, cout in [(32, 64, 32, 64), (32, 32, 64, 128), (32, 16, 128, 256),
                             (32, 8, 256, 256)]:
    x = jax.random.normal(jax.random.key(0), (b, size, size, cin))
    kernel = jax.random.normal(jax.random.key(1), (4, 4, cin, cout)) / (4 * cin**0.5)
    row = []
    for name, conv in VARIANTS.items():
      def fwd_bwd(v, k, conv=conv):
        return jax.grad(lambda v, k: jnp.sum(jnp.sin(conv(v, k))), (0, 1))(v, k)

      def second(v, k, conv=conv):
        def penalty(v, k):
          gx = jax.grad(lambda v: jnp.sum(jnp.sin(conv(v, k))))(v)
          return jnp.sum(gx ** 2)
        return jax.grad(penalty, (0, 1))(v, k)

      row.append(f"{name}: fwd {_ms(conv, x, kernel):6.1f}  fwd+bwd {_ms(fwd_bwd, x, kernel):6.1f}"
                 f"  2nd order {_ms(second, x, kernel):7.1f}")
    print(f"b{b} {size}x{size} {cin}->{cout} | " + " | ".join(row), flush=True)


if __name__ == "__main__":
  main()
