"""Matmuls in the forms XLA:CPU runs fast: a Dense layer whose kernel gradient does not transpose
the backward chain, and the tied vocabulary projection of a decoding step."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


@jax.custom_vjp
def matmul(x: Array, kernel: Array) -> Array:
  """x [..., in] @ kernel [in, out]; the kernel gradient is computed as (g^T x)^T.

  For autodiff's x^T g, XLA:CPU lays g out transposed, and g is usually the end of a long
  elementwise backward chain (the gated GELU's), which it then fuses into that transpose and
  computes in transposed order. (g^T x)^T transposes x instead: a T5 FFN's forward + backward at
  the GAN step's sizes took 10.1 instead of 20.4 ms (benchmarks/RESULTS.md).
  """
  return x @ kernel


def _matmul_fwd(x, kernel):
  return x @ kernel, (x, kernel)


def _matmul_bwd(residuals, g):
  x, kernel = residuals
  tokens_g = g.reshape(-1, g.shape[-1])  # [tokens, out]
  tokens_x = x.reshape(-1, x.shape[-1])  # [tokens, in]
  dk = jax.lax.dot_general(tokens_g, tokens_x, (((0,), (0,)), ((), ()))).T  # [in, out]
  return g @ kernel.T, dk


matmul.defvjp(_matmul_fwd, _matmul_bwd)


class Dense(nn.Module):
  """nn.Dense without bias (same `kernel` [in, out] parameter) through `matmul`."""
  features: int
  kernel_init: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    return matmul(x.astype(self.dtype), kernel.astype(self.dtype))


FEW_ROWS = 64  # up to this many rows, vocab_logits computes [vocab, rows] on CPU


def vocab_logits(x: Array, embedding: Array) -> Array:
  """x [..., d_model] @ embedding [vocab, d_model]^T -> [..., vocab].

  A decoding step projects a few rows (batch x beams) onto the whole vocabulary, a pass over the
  embedding (66 MB for t5-small) that is bound by memory. XLA:CPU's kernel reads it about 1.5x
  faster computing embedding @ x^T ([vocab, rows]) than x @ embedding^T: 3.3 vs 4.9 ms for 8 rows
  of t5-small here, 6.6 vs 9.4 for 32, a tie at 64, slower from 128 (benchmarks/RESULTS.md). The
  barrier stops XLA from folding the transpose back into the dot.
  """
  rows = x.reshape(-1, x.shape[-1])  # [rows, d_model]
  if rows.shape[0] > FEW_ROWS or jax.default_backend() != "cpu":
    return x @ embedding.T
  by_vocab = jax.lax.dot_general(embedding, rows, (((1,), (1,)), ((), ())))  # [vocab, rows]
  return jax.lax.optimization_barrier(by_vocab).T.reshape(*x.shape[:-1], embedding.shape[0])
