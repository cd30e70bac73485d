"""The generator's upsample + 3x3 conv on CPU, at run.py's 64px sizes (batch 32): the 3x3 form
(one 3x3 conv at the input's resolution with 4x the output channels), the 2x2 form (one 2x2 conv
padded by 1, 4/9 of the FLOPs), the same 2x2 conv on an explicitly padded input (VALID), and ours
(`upsample_conv3x3`). Forward, forward + input gradient, forward + kernel gradient; median wall
ms with the train step's XLA options. XLA:CPU runs the kernel gradient of the padding 2x2 conv
on a slow path; the VALID one's is fast, and is the one ours takes.

  python benchmarks/upsample_conv.py
"""
from __future__ import annotations

import argparse
import os
import sys

import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.strided_conv import SEPARATE_GRADIENTS, print_table  # noqa: E402
from llmimg_jax import cli  # noqa: E402
from llmimg_jax.gan import generator  # noqa: E402
from llmimg_jax.gan.common import upsample2x  # noqa: E402
from llmimg_jax.gan.layers import conv2d  # noqa: E402
from llmimg_jax.train.host_memory import reuse_host_memory  # noqa: E402


def _taps_3x3(k0, k1, k2):  # output phase r reads input rows i - 1, i, i + 1: [offset][phase]
  zero = jnp.zeros_like(k0)
  return [[k0, zero], [k1 + k2, k0 + k1], [zero, k2]]


def _depth_to_space(y):  # [b, h, w, (r, s, out)] -> [b, 2h, 2w, out]
  b, h, w, _ = y.shape
  return y.reshape(b, h, w, 2, 2, -1).transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, -1)


def three_by_three_form(x, kernel):
  return _depth_to_space(conv2d(x, generator._phase_kernel(kernel, _taps_3x3)))


def two_by_two_valid(x, kernel):
  return generator._select_phases(generator._phase_windows_valid(
      x, generator._phase_kernel(kernel, generator._taps_2x2)))


def plain_upsample_conv3x3(x, kernel):
  """What UpsampleConv3x3 computes, written plainly: nearest 2x upsample, then a 3x3 SAME conv
  (autodiff for the gradients). For A/Bs of the whole step, e.g. on a GPU:
  G=llmimg_jax.gan.generator.upsample_conv3x3=@benchmarks.upsample_conv.plain_upsample_conv3x3
  step_options.py --options "train;$G"
  """
  return conv2d(upsample2x(x), kernel.astype(x.dtype))  # [b, 2h, 2w, out]


VARIANTS = {"3x3 form": three_by_three_form,
            "2x2 form": generator._upsample_conv_2x2_form,
            "2x2 VALID": two_by_two_valid,
            "ours": generator.upsample_conv3x3}


def main() -> None:
  argparse.ArgumentParser(  # no options; --help prints the docstring
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
  reuse_host_memory()  # as train.py: XLA's scratch buffers stay mapped between calls
  print_table([(32, 4, 256, 256), (32, 8, 256, 128), (32, 16, 128, 64), (32, 32, 64, 32)],
              VARIANTS, 3, SEPARATE_GRADIENTS)


if __name__ == "__main__":
  with cli.ends_on_signal("benchmarks/upsample_conv.py",
                          "the table was not printed: rerun the command."):
    main()
