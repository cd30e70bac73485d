"""llmimg_jax/text/layers.py: the Dense layer's custom kernel gradient and the vocabulary
projection."""
import jax
import jax.numpy as jnp
import numpy as np

import pytest

from llmimg_jax.text.layers import matmul, vocab_logits


def test_matmul_gradients_equal_autodiff():
  """matmul's custom VJP (kernel gradient as (g^T x)^T) equals autodiff of x @ kernel, also when
  differentiated a second time (as the GAN step's gradient penalty may)."""
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (3, 5, 8))  # [batch, length, in]
  kernel = jax.random.normal(kk, (8, 6))  # [in, out]
  g = jax.random.normal(kg, (3, 5, 6))
  ours = jax.vjp(matmul, x, kernel)[1](g)
  plain = jax.vjp(lambda a, b: a @ b, x, kernel)[1](g)
  for a, b in zip(ours, plain):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

  def penalty(f, x, kernel):  # a gradient-norm penalty, then its gradient w.r.t. the kernel
    dx = jax.grad(lambda x: jnp.sum(jnp.tanh(f(x, kernel))))(x)
    return jnp.sum(dx ** 2)
  np.testing.assert_allclose(jax.grad(penalty, argnums=2)(matmul, x, kernel),
                             jax.grad(penalty, argnums=2)(lambda a, b: a @ b, x, kernel),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch, length", [(1, 1), (8, 1), (4, 3), (32, 2), (33, 2)])
def test_vocab_logits_equal_the_plain_projection(batch, length):
  """x @ embedding^T in value and gradient, for a decoding step's few rows (the [vocab, rows]
  form on CPU, up to 64 rows) and for more rows than that form takes."""
  kx, ke, kg = jax.random.split(jax.random.PRNGKey(1), 3)
  x = jax.random.normal(kx, (batch, length, 16))  # [batch, length, d_model]
  embedding = jax.random.normal(ke, (300, 16))  # [vocab, d_model]
  g = jax.random.normal(kg, (batch, length, 300))
  ours, ours_vjp = jax.vjp(jax.jit(vocab_logits), x, embedding)
  plain, plain_vjp = jax.vjp(lambda a, e: a @ e.T, x, embedding)
  assert ours.shape == (batch, length, 300)
  np.testing.assert_allclose(ours, plain, rtol=1e-5, atol=1e-5)
  for a, b in zip(ours_vjp(g), plain_vjp(g)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_vocab_logits_of_few_rows_keep_the_vocabulary_major_dot_on_cpu():
  """XLA folds a transpose of the dot's output back into the dot (the slow [rows, vocab] form of
  XLA:CPU's kernel); the compiled program must still compute [vocab, rows]."""
  x, embedding = jnp.ones((8, 1, 16)), jnp.ones((300, 16))
  hlo = jax.jit(vocab_logits).lower(x, embedding).compile().as_text()
  assert "f32[300,8]" in hlo, hlo
  hlo = jax.jit(lambda a, e: a @ e.T).lower(x, embedding).compile().as_text()
  assert "f32[300,8]" not in hlo  # what the test above guards against
