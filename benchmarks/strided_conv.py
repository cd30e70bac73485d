"""One DF-GAN downsampling conv (4x4, stride 2, pad 1) on CPU: XLA's strided conv vs our
Conv4x4Stride2 (space-to-depth + one matmul), forward, forward+backward, and an MA-GP-style
second derivative (gradient w.r.t. params and input of |d out / d input|^2). Process CPU ms.

  python benchmarks/strided_conv.py
"""
from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmimg_jax.gan.discriminator import Conv4x4Stride2


def _cpu_ms(fn, *args, n: int = 8) -> float:
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  t0 = time.process_time()
  for _ in range(n):
    jax.block_until_ready(compiled(*args))
  return (time.process_time() - t0) / n * 1e3


def main() -> None:
  for b, size, cin, cout in [(16, 32, 16, 32), (16, 16, 32, 64), (16, 8, 64, 128),
                             (32, 64, 32, 64)]:
    x = jax.random.normal(jax.random.key(0), (b, size, size, cin))
    row = []
    for name, module in [("xla strided", nn.Conv(cout, (4, 4), strides=(2, 2),
                                                 padding=((1, 1), (1, 1)), use_bias=False)),
                         ("ours", Conv4x4Stride2(cout))]:
      params = module.init(jax.random.key(1), x)

      def fwd(p, v, module=module):
        return module.apply(p, v)

      def fwd_bwd(p, v, module=module):
        return jax.grad(lambda p, v: jnp.sum(jnp.sin(module.apply(p, v))), (0, 1))(p, v)

      def second(p, v, module=module):
        def penalty(p, v):
          gx = jax.grad(lambda v: jnp.sum(jnp.sin(module.apply(p, v))))(v)
          return jnp.sum(gx ** 2)
        return jax.grad(penalty, (0, 1))(p, v)

      row.append(f"{name}: fwd {_cpu_ms(fwd, params, x):7.1f}  fwd+bwd "
                 f"{_cpu_ms(fwd_bwd, params, x):7.1f}  2nd order {_cpu_ms(second, params, x):7.1f}")
    print(f"b{b} {size}x{size} {cin}->{cout} | " + " | ".join(row), flush=True)


if __name__ == "__main__":
  main()
