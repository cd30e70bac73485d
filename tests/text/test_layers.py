"""llmimg_jax/text/layers.py: the Dense layer's custom kernel gradient."""
import jax
import jax.numpy as jnp
import numpy as np

from llmimg_jax.text.layers import matmul


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
