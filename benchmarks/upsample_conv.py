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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.strided_conv import _loss, print_table  # noqa: E402
from llmimg_jax.gan import generator  # noqa: E402

VARIANTS = {"3x3 form": generator._upsample_conv_3x3_form,
            "2x2 form": generator._upsample_conv_2x2_form,
            "ours": generator.upsample_conv3x3}


def main() -> None:
  print_table([(32, 4, 256, 256), (32, 8, 256, 128), (32, 16, 128, 64), (32, 32, 64, 32)],
              VARIANTS, 3, {"fwd": lambda conv: conv,
                            "+dx": lambda conv: jax.grad(_loss(conv), 0),
                            "+dkernel": lambda conv: jax.grad(_loss(conv), 1)})


if __name__ == "__main__":
  main()
