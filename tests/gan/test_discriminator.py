import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmimg_jax.gan import Discriminator, mismatched
from tests.gan.utils import _random_params, fast_key

B, D_TEXT = 3, 12


def _liven(params):
  """Residual gains start at 0 (DF-GAN); open them so the residual paths count."""
  def fix(path, leaf):
    return jnp.full_like(leaf, 0.5) if getattr(path[-1], "key", "") == "gain" else leaf
  return jax.tree_util.tree_map_with_path(fix, params)


@pytest.fixture(scope="module")
def d32():
  d = Discriminator(32, nf=4, cond_dim=8, embed_dim=6)
  x = jax.random.uniform(jax.random.key(0), (B, 32, 32, 3), minval=-1, maxval=1)
  sent = jax.random.normal(jax.random.key(1), (B, D_TEXT))
  params = jax.jit(d.init)(fast_key(2), x, sent)

  @jax.jit
  def heads(params, x, sent):
    feats = d.apply(params, x, method=d.features)
    return {
        "features": feats,
        "real": d.apply(params, feats, sent, method=d.logits),
        "mismatch": d.apply(params, feats, mismatched(sent), method=d.logits),
        "image_embedding": d.apply(params, feats, method=d.image_embedding),
        "text_embedding": d.apply(params, sent, method=d.text_embedding),
        "call": d.apply(params, x, sent),
    }

  return d, params, heads, x, sent


def test_init_creates_every_parameter(d32):
  _, params, _, _, _ = d32
  names = set(params["params"])
  assert names == {"conv_img", "blocks_0", "blocks_1", "blocks_2", "sent_proj", "joint_conv",
                   "logit_conv", "image_proj", "text_proj"}
  assert params["params"]["blocks_2"]["conv1"]["kernel"].shape == (3, 3, 32, 32)  # 8*nf at 4x4
  assert params["params"]["joint_conv"]["kernel"].shape == (3, 3, 32 + 8, 8)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


def test_head_shapes_and_shared_backbone(d32):
  _, params, heads, x, sent = d32
  for p in (params, _liven(params)):
    out = heads(p, x, sent)
    assert out["features"].shape == (B, 4, 4, 32)
    assert out["real"].shape == (B,) and out["real"].dtype == jnp.float32
    assert out["image_embedding"].shape == (B, 6) and out["text_embedding"].shape == (B, 6)
    # The methods compose to exactly what __call__ computes.
    np.testing.assert_allclose(out["call"]["logits"], out["real"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["call"]["image_embedding"], out["image_embedding"],
                               rtol=1e-5, atol=1e-6)
    # Matching-aware: the logit depends on which sentence is paired with the image.
    assert float(jnp.max(jnp.abs(out["real"] - out["mismatch"]))) > 1e-4


def test_logits_depend_on_the_image(d32):
  _, params, heads, x, sent = d32
  a = heads(_liven(params), x, sent)["real"]
  b = heads(_liven(params), -x, sent)["real"]
  assert float(jnp.max(jnp.abs(a - b))) > 1e-4


@pytest.mark.parametrize("resolution,blocks", [(64, 4), (128, 5), (256, 6)])
def test_larger_resolutions_shapes(resolution, blocks):
  d = Discriminator(resolution, nf=4, cond_dim=8, embed_dim=6)
  x = jnp.zeros((2, resolution, resolution, 3))
  sent = jnp.zeros((2, D_TEXT))
  params = jax.eval_shape(d.init, fast_key(0), x, sent)
  assert f"blocks_{blocks - 1}" in params["params"] and f"blocks_{blocks}" not in params["params"]
  out = jax.eval_shape(d.apply, params, x, sent)
  assert out["logits"].shape == (2,) and out["image_embedding"].shape == (2, 6)
  feats = jax.eval_shape(lambda p, x: d.apply(p, x, method=d.features), params, x)
  assert feats.shape == (2, 4, 4, 32)


def test_without_contrastive_head():
  d = Discriminator(32, nf=4, cond_dim=8, contrastive=False)
  x, sent = jnp.zeros((2, 32, 32, 3)), jnp.zeros((2, D_TEXT))
  params = jax.eval_shape(d.init, fast_key(0), x, sent)
  assert "image_proj" not in params["params"] and "text_proj" not in params["params"]
  out = jax.eval_shape(d.apply, params, x, sent)
  assert set(out) == {"logits"}
  feats = jnp.zeros((2, 4, 4, 32))
  with pytest.raises(ValueError, match="contrastive=False"):
    jax.eval_shape(lambda p, f: d.apply(p, f, method=d.image_embedding), params, feats)


def test_errors():
  sent = jnp.zeros((2, D_TEXT))
  with pytest.raises(ValueError, match=r"allowed resolutions: 32, 64, 128, 256"):
    jax.eval_shape(Discriminator(100).init, fast_key(0), jnp.zeros((2, 100, 100, 3)), sent)
  with pytest.raises(ValueError, match=r"expected images \[batch, 32, 32, 3\]"):
    jax.eval_shape(Discriminator(32, nf=4).init, fast_key(0), jnp.zeros((2, 64, 64, 3)), sent)


def test_uint8_images_are_refused_not_read_as_0_to_255(d32):
  """uint8 images (a dataset's or the Sampler's) were cast to float and scored as values in
  0..255, far outside the [-1, 1] D trains on, without a word."""
  d, params, _, x, sent = d32
  pixels = np.asarray(jnp.round((x + 1) * 127.5), np.uint8)
  for images in (pixels, pixels.astype(np.int32)):
    with pytest.raises(ValueError, match=r"float images in \[-1, 1\], got (uint8|int32).*"
                       r"x / 127\.5 - 1"):
      d.apply(params, images, sent)
  assert d.apply(params, pixels / 127.5 - 1, sent)["logits"].shape == (B,)


def test_sentences_of_another_batch_than_the_images_are_named(d32):
  """One sentence [1, d] was tiled over every image by logits while text_embedding stayed [1, e]
  (outputs of two batches), and [2, d] for 3 images failed in jnp.broadcast_to ('Incompatible
  types for broadcasting'). As the Generator (one text row per image), D now names both batches
  and the fix."""
  d, params, _, x, sent = d32
  feats = d.apply(params, x, method=d.features)
  for s in (sent[:1], sent[:2]):
    message = (rf"^images and sent must hold one row per image; got batches of {B} and {len(s)} "
               rf"\(sent \({len(s)}, {D_TEXT}\)\): repeat the sentence's rows for several images "
               rf"\(jnp\.repeat\(sent, {B}, axis=0\) for one\)\.")
    with pytest.raises(ValueError, match=message):
      d.apply(params, x, s)
    with pytest.raises(ValueError, match=message):
      d.apply(params, feats, s, method=d.logits)


def test_matching_aware_head_against_numpy():
  """logits = 4x4 VALID conv(lrelu(3x3 conv([features, tiled sent_proj(sentence)]))), DF-GAN's
  D_GET_LOGITS; with every parameter random."""
  d = Discriminator(resolution=32, nf=2, cond_dim=3, embed_dim=4)
  params = _random_params(d, jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 5)))
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(2, 4, 4, 16)).astype(np.float32)
  sent = rng.normal(size=(2, 5)).astype(np.float32)
  s = sent @ params["sent_proj"]["kernel"] + params["sent_proj"]["bias"]  # [2, 3]
  h = np.concatenate([feats, np.broadcast_to(s[:, None, None], (2, 4, 4, 3))], -1)
  padded = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
  k = params["joint_conv"]["kernel"]  # [3, 3, 19, 4]
  conv = sum(padded[:, i:i + 4, j:j + 4] @ k[i, j] for i in range(3) for j in range(3))
  conv = conv + params["joint_conv"]["bias"]
  h = np.where(conv > 0, conv, 0.2 * conv)  # leaky ReLU, slope 0.2
  want = np.einsum("bhwc,hwc->b", h, params["logit_conv"]["kernel"][..., 0])
  want = want + params["logit_conv"]["bias"][0]
  got = d.apply({"params": params}, jnp.asarray(feats), jnp.asarray(sent), method=d.logits)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_matmul_convs_equal_the_strided_and_valid_convs_they_replace():
  """Conv4x4Stride2 (custom gradients) / WholeImageConv (a matmul) are nn.Conv(4x4, stride 2,
  pad 1) / nn.Conv(4x4, VALID): same parameters, outputs, first and second derivatives."""
  import flax.linen as nn
  from llmimg_jax.gan.discriminator import Conv4x4Stride2, WholeImageConv
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  cases = [(Conv4x4Stride2(5), nn.Conv(5, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                                       use_bias=False)),
           (WholeImageConv(2), nn.Conv(2, (4, 4), padding="VALID"))]
  for ours, ref in cases:
    xin = x if isinstance(ours, Conv4x4Stride2) else x[:, :4, :4]
    params = ours.init(jax.random.key(1), xin)
    ref_params = ref.init(jax.random.key(1), xin)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, ref_params)
    out = ours.apply(params, xin).reshape(-1)
    np.testing.assert_allclose(out, ref.apply(params, xin).reshape(-1), atol=1e-5)

    def loss(p, v):
      return jnp.sum(jnp.sin(ours.apply(p, v)))
    first = jax.grad(loss, argnums=(0, 1))(params, xin)
    first_ref = jax.grad(lambda p, v: jnp.sum(jnp.sin(ref.apply(p, v))), argnums=(0, 1))(
        params, xin)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(first_ref)):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)

    def penalty(module):  # MA-GP-like: a loss on the input gradient, differentiated again
      def grad_x(p, v):
        return jax.grad(lambda v: jnp.sum(jnp.sin(module.apply(p, v))))(v)
      return jax.grad(lambda p, v: jnp.sum(grad_x(p, v) ** 2), argnums=(0, 1))(params, xin)
    for a, b in zip(jax.tree.leaves(penalty(ours)), jax.tree.leaves(penalty(ref))):
      np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_strided_conv_refuses_odd_sizes_by_name():
  from llmimg_jax.gan.discriminator import conv4x4_stride2
  x, kernel = jnp.zeros((2, 7, 6, 3)), jnp.zeros((4, 4, 3, 5))
  for f in (conv4x4_stride2, jax.grad(lambda x_, k_: conv4x4_stride2(x_, k_).sum())):
    with pytest.raises(ValueError, match=r"even height and width, got x of shape \(2, 7, 6, 3\)"):
      f(x, kernel)


def test_strided_conv_input_gradient_in_bf16_rounds_like_xlas():
  """bf16 compute: the input gradient (the matmul form's transpose) sums the four 2x2 views in
  fp32 and rounds once, as XLA's conv accumulates (rounded per view it had ~1.9x its error).
  MA-GP and G's gradient through D both take it in every DownBlock."""
  from llmimg_jax.gan.discriminator import _conv4x4_stride2_direct, conv4x4_stride2
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  f32 = lambda a: a.astype(jnp.float32)  # noqa: E731
  x = jax.random.normal(k1, (8, 16, 16, 32)).astype(jnp.bfloat16)
  kernel = (jax.random.normal(k2, (4, 4, 32, 64)) / 23).astype(jnp.bfloat16)
  g = jax.random.normal(k3, (8, 8, 8, 64)).astype(jnp.bfloat16)

  def dx(conv, x_, k_):  # the input gradient for output gradient g
    return jax.vjp(lambda a: conv(a, k_), x_)[1](g.astype(x_.dtype))[0]

  truth = np.asarray(dx(_conv4x4_stride2_direct, f32(x), f32(kernel)), np.float64)

  def rel_err(a):
    return np.linalg.norm(np.asarray(a, np.float64) - truth) / np.linalg.norm(truth)

  got = dx(conv4x4_stride2, x, kernel)
  assert got.dtype == jnp.bfloat16
  assert rel_err(got) < 1.2 * rel_err(dx(_conv4x4_stride2_direct, x, kernel))


@pytest.mark.parametrize("matmul_reductions", [True, False])
def test_dense_bias_gradients_in_bf16_are_summed_in_fp32(monkeypatch, matmul_reductions):
  """D's dense heads (and G's: one layers.Dense) added their bias in bf16 with bf16 compute
  (nn.Dense), so its gradient, a sum over the batch, was summed in bf16 too; it is summed in
  fp32 now, as the convs' biases are (layers.add_bias). text_proj's here, over 16384 sentences:
  1.6% off before, 0.1% now (the fp32 sum rounded to the bf16 bias's gradient); the exact
  gradient is the bf16 cotangent's plain sum."""
  from llmimg_jax.gan import layers
  monkeypatch.setattr(layers, "MATMUL_REDUCTIONS", matmul_reductions)
  d = Discriminator(resolution=32, nf=4, cond_dim=8, embed_dim=16, dtype=jnp.bfloat16)
  params = d.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 12)))["params"]
  sent = jax.random.normal(jax.random.key(1), (16384, 12))  # [batch, dim]
  cotangent = jax.random.normal(jax.random.key(2), (16384, 16)).astype(jnp.bfloat16)

  def loss(p):
    return jnp.sum(d.apply({"params": p}, sent, method=d.text_embedding) * cotangent)

  got = np.asarray(jax.grad(loss)(params)["text_proj"]["bias"], np.float64)
  want = np.asarray(cotangent, np.float64).sum(0)
  assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.005
