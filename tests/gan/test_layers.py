import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from llmimg_jax.gan import layers


@pytest.fixture
def matmul_reductions(monkeypatch):
  """Forces the custom-VJP path (the default only on CPU, which is where tests run anyway)."""
  monkeypatch.setattr(layers, "MATMUL_REDUCTIONS", True)


def _rand(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def test_sums_equal_jnp_sum():
  x = _rand(0, (3, 5, 4, 6))
  np.testing.assert_allclose(layers.channel_sum(x), x.sum((0, 1, 2)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(layers.spatial_sum(x), x.sum((1, 2)), rtol=1e-5, atol=1e-5)


def _plain_bias(x, b):
  return x + b


def _plain_scale_shift(x, g, b):
  return x * g[:, None, None, :] + b[:, None, None, :]


@pytest.mark.parametrize("op, plain, args", [
    (layers.add_bias, _plain_bias, ((2, 4, 4, 3), (3,))),
    (layers.scale_shift, _plain_scale_shift, ((2, 4, 4, 3), (2, 3), (2, 3))),
])
def test_gradients_to_second_order_equal_autodiff(matmul_reductions, op, plain, args):
  """Values, gradients, and the MA-GP-style gradient of a squared input gradient (reverse over
  reverse, which differentiates the custom backward rule) all equal plain autodiff's."""
  inputs = [_rand(i, shape) for i, shape in enumerate(args)]

  def loss(fn, *a):
    return jnp.sum(jnp.sin(fn(*a)) * jnp.cos(a[0]))

  def penalty(fn, *a):  # ||d loss / dx||^2, differentiated w.r.t. every input
    gx = jax.grad(loss, argnums=1)(fn, *a)
    return jnp.sum(gx**2)

  np.testing.assert_allclose(op(*inputs), plain(*inputs), rtol=1e-6)
  argnums = tuple(range(1, len(inputs) + 1))
  for f in (loss, penalty):
    got = jax.grad(f, argnums=argnums)(op, *inputs)
    want = jax.grad(f, argnums=argnums)(plain, *inputs)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  # The custom rule is really in use (a fresh lambda: make_jaxpr caches traces per function).
  assert "custom_vjp_call" in str(jax.make_jaxpr(lambda *a: op(*a))(*inputs))


def test_forced_off_is_plain_autodiff(monkeypatch):
  monkeypatch.setattr(layers, "MATMUL_REDUCTIONS", False)
  x, b = _rand(0, (2, 4, 4, 3)), _rand(1, (3,))
  assert "custom_vjp_call" not in str(jax.make_jaxpr(lambda *a: layers.add_bias(*a))(x, b))


@pytest.mark.parametrize("x_shape, kernel_shape", [((2, 6, 7, 5), (3, 3, 5, 3)),
                                                    ((2, 6, 7, 3), (3, 3, 3, 6))])
def test_narrow_conv3x3_to_second_order_equals_autodiff(monkeypatch, x_shape, kernel_shape):
  """conv3x3 with <= 4 output (to_rgb) or input (D's conv_img) channels: the custom rules give
  conv2d's values, gradients and MA-GP-style second derivatives."""
  monkeypatch.setattr(layers, "NARROW_CONVS", True)
  x, kernel = _rand(0, x_shape), _rand(1, kernel_shape)
  weight = _rand(2, x_shape[:3] + (kernel_shape[3],))

  def loss(conv, x, kernel):
    return jnp.sum(jnp.sin(conv(x, kernel)) * weight)

  def penalty(conv, x, kernel):  # ||d loss / dx||^2
    return jnp.sum(jax.grad(loss, argnums=1)(conv, x, kernel) ** 2)

  np.testing.assert_allclose(layers.conv3x3(x, kernel), layers.conv2d(x, kernel),
                             rtol=1e-5, atol=1e-5)
  for f in (loss, penalty):
    got = jax.grad(f, argnums=(1, 2))(layers.conv3x3, x, kernel)
    want = jax.grad(f, argnums=(1, 2))(layers.conv2d, x, kernel)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(jnp.abs(w).max()))
  assert "custom_vjp_call" in str(jax.make_jaxpr(lambda *a: layers.conv3x3(*a))(x, kernel))


@pytest.mark.parametrize("kernel_size, use_bias, features", [
    ((3, 3), True, 5), ((3, 3), False, 5), ((1, 1), True, 5), ((3, 3), True, 3)])
def test_conv_equals_nn_conv(matmul_reductions, kernel_size, use_bias, features):
  """Same parameter tree and init (same key), same outputs and parameter gradients."""
  x = _rand(0, (2, 6, 6, 4))
  ours = layers.Conv(features, kernel_size, use_bias=use_bias)
  ref = nn.Conv(features, kernel_size, use_bias=use_bias)
  params = ours.init(jax.random.key(1), x)
  ref_params = ref.init(jax.random.key(1), x)
  assert jax.tree.structure(params) == jax.tree.structure(ref_params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_array_equal(a, b)
  if use_bias:  # a non-zero bias, so the bias path is exercised
    params = jax.tree.map(lambda p: p + 0.1, params)
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)

  def loss(module, p):
    return jnp.sum(jnp.tanh(module.apply(p, x)) ** 2)
  grads, ref_grads = jax.grad(loss, 1)(ours, params), jax.grad(loss, 1)(ref, params)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_narrow_conv3x3_in_bf16_rounds_like_xlas_conv(monkeypatch):
  """bf16 compute: the nine taps are summed in fp32 and rounded once, as XLA's conv does (summed
  in bf16 they had 2.5x its error). Forward (G's to_rgb) and input gradient (D's conv_img)."""
  monkeypatch.setattr(layers, "NARROW_CONVS", True)
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(k1, (8, 32, 32, 32)).astype(jnp.bfloat16)
  kernel = (jax.random.normal(k2, (3, 3, 32, 3)) / 17).astype(jnp.bfloat16)
  f32 = lambda a: a.astype(jnp.float32)  # noqa: E731
  truth = layers.conv2d(f32(x), f32(kernel))
  xla = _rel_err(layers.conv2d(x, kernel), truth)
  assert _rel_err(layers.conv3x3(x, kernel), truth) < 1.2 * xla
  # conv_img (3 -> 32): its input gradient is a 32 -> 3 conv of g in the same form.
  x3 = jax.random.normal(k1, (8, 32, 32, 3)).astype(jnp.bfloat16)
  kernel3 = (jax.random.normal(k2, (3, 3, 3, 32)) / 5).astype(jnp.bfloat16)
  g = jax.random.normal(k3, (8, 32, 32, 32)).astype(jnp.bfloat16)
  dx = lambda conv, x_, k_, g_: jax.vjp(lambda a: conv(a, k_), x_)[1](g_)[0]  # noqa: E731
  truth = dx(layers.conv2d, f32(x3), f32(kernel3), f32(g))
  xla = _rel_err(dx(layers.conv2d, x3, kernel3, g), truth)
  assert _rel_err(dx(layers.conv3x3, x3, kernel3, g), truth) < 1.2 * xla


def _residual_blocks():
  from llmimg_jax.gan.discriminator import DownBlock
  from llmimg_jax.gan.generator import CrossAttention, UpBlock
  cond, words = _rand(1, (4, 6)), _rand(2, (4, 5, 6))
  mask = jnp.ones((4, 5), jnp.int32)
  return [(lambda dt: DownBlock(16, dt), (_rand(3, (4, 32, 32, 8)),)),
          (lambda dt: UpBlock(8, dt), (_rand(4, (4, 16, 16, 8)), cond)),
          (lambda dt: CrossAttention(1, dt), (_rand(5, (4, 32, 32, 8)), words, mask))]


@pytest.mark.parametrize("block", range(3), ids=["DownBlock", "UpBlock", "CrossAttention"])
def test_residual_gain_gradient_in_bf16_is_summed_in_fp32(block):
  """A residual gain's gradient sums over every element of its branch; with bf16 compute that sum
  ran in bf16 (60-80% off for D's and G's blocks, 10% for the attention). Now as the fp32
  model's, up to the bf16 forward's noise."""
  make, args = _residual_blocks()[block]
  params = make(jnp.float32).init(jax.random.key(0), *args)["params"]
  params = {**params, "gain": jnp.float32(0.7)}  # open the residual branch (zero-init gains)
  cotangent = _rand(6, make(jnp.float32).apply({"params": params}, *args).shape) + 1.0

  def gain_grad(dtype):
    module = make(dtype)

    def loss(p):
      return jnp.sum(module.apply({"params": p}, *args).astype(jnp.float32) * cotangent)

    return float(jax.grad(loss)(params)["gain"])

  assert gain_grad(jnp.bfloat16) == pytest.approx(gain_grad(jnp.float32), rel=0.03)


@pytest.mark.parametrize("param", ["bias", "gamma", "beta"])
def test_plain_reductions_sum_bf16_gradients_in_fp32(monkeypatch, param):
  """With the matmul reductions off (every backend but CPU), a bf16 bias, gamma or beta's gradient
  is autodiff's sum over the batch and pixels: it ran in bf16 (the bias's 30-80% off)."""
  monkeypatch.setattr(layers, "MATMUL_REDUCTIONS", False)
  x = (_rand(0, (8, 32, 32, 4)) + 1.0).astype(jnp.bfloat16)
  g = (_rand(1, x.shape) + 1.0).astype(jnp.bfloat16)
  gamma, beta = _rand(2, (8, 4)).astype(jnp.bfloat16), _rand(3, (8, 4)).astype(jnp.bfloat16)
  g64, x64 = np.asarray(g, np.float64), np.asarray(x, np.float64)
  if param == "bias":
    got = jax.vjp(lambda b: layers.add_bias(x, b), beta[0])[1](g)[0]
    want = g64.sum((0, 1, 2))
  else:
    fn = {"gamma": lambda v: layers.scale_shift(x, v, beta),
          "beta": lambda v: layers.scale_shift(x, gamma, v)}[param]
    got = jax.vjp(fn, gamma)[1](g)[0]
    want = (g64 * x64 if param == "gamma" else g64).sum((1, 2))
  assert got.dtype == jnp.bfloat16 and _rel_err(got, want) < 0.01
