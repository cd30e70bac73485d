"""The generator's upsample + 3x3 conv on CPU, at run.py's 64px sizes (batch 32): the 3x3 form
(one 3x3 conv with 4x the output channels), the 2x2 form (one 2x2 conv, 4/9 of the FLOPs), and
ours (`upsample_conv3x3`: the 2x2 form, kernel gradient through the 3x3 form). Forward, forward +
input gradient, forward + kernel gradient; median wall ms with the train step's XLA options.

  python benchmarks/upsample_conv.py
"""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.strided_conv import _ms  # noqa: E402
from llmimg_jax.gan import generator  # noqa: E402

VARIANTS = {"3x3 form": generator._upsample_conv_3x3_form,
            "2x2 form": generator._upsample_conv_2x2_form,
            "ours": generator.upsample_conv3x3}


def main() -> None:
  for b, size, cin, cout in [(32, 4, 256, 256), (32, 8, 256, 128), (32, 16, 128, 64),
                             (32, 32, 64, 32)]:
    x = jax.random.normal(jax.random.key(0), (b, size, size, cin))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) / (3 * cin**0.5)
    row = []
    for name, conv in VARIANTS.items():
      def loss(v, k, conv=conv):
        return jnp.sum(jnp.sin(conv(v, k)))
      row.append(f"{name}: fwd {_ms(conv, x, kernel):6.1f}  +dx "
                 f"{_ms(jax.grad(loss, 0), x, kernel):6.1f}  +dkernel "
                 f"{_ms(jax.grad(loss, 1), x, kernel):7.1f}")
    print(f"b{b} {size}x{size} {cin}->{cout} | " + " | ".join(row), flush=True)


if __name__ == "__main__":
  main()
