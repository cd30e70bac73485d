import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from llmimg_jax.gan import Generator, sentence_embedding
from llmimg_jax.gan.generator import CrossAttention
from tests.gan.utils import _random_params, fast_key

B, L, D_TEXT, Z = 2, 6, 12, 16


def _inputs(key, batch=B, length=L):
  kz, ks, kw = jax.random.split(key, 3)
  z = jax.random.normal(kz, (batch, Z))
  sent = jax.random.normal(ks, (batch, D_TEXT))
  words = jax.random.normal(kw, (batch, length, D_TEXT))
  mask = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]], jnp.int32)[:batch]
  return z, sent, words, mask


def _set_gains(params, value):
  """Sets every cross-attention gain (zero at init) to `value`."""
  def fix(path, leaf):
    names = [getattr(p, "key", "") for p in path]
    is_attn_gain = names[-1] == "gain" and names[-2].startswith("attn")
    return jnp.full_like(leaf, value) if is_attn_gain else leaf
  return jax.tree_util.tree_map_with_path(fix, params)


def _liven(params, seed=2):
  """Stands in for trained weights: opens the zero-initialised paths (affine output layers
  that predict gamma/beta, cross-attention gains) so every text route is live."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  out = []
  for (path, leaf), k in zip(leaves, keys):
    names = [getattr(p, "key", "") for p in path]
    if names[-2:] == ["fc2", "kernel"]:
      leaf = leaf + 0.3 * jax.random.normal(k, leaf.shape) / jnp.sqrt(leaf.shape[0])
    out.append(leaf)
  return _set_gains(jax.tree_util.tree_unflatten(treedef, out), 1.0)


def _numpy_params(g, inputs, seed=0):
  """Random params of the right structure without compiling `init` (slow on XLA:CPU): kernels
  ~ N(0, 1/fan_in), LayerNorm scales and gains 1, biases 0. Only for shape/range checks."""
  shapes = jax.eval_shape(g.init, fast_key(seed), *inputs)
  rng = np.random.default_rng(seed)
  def fill(path, leaf):
    name = getattr(path[-1], "key", "")
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), jnp.float32)
    return jnp.full(leaf.shape, 1.0 if name in ("scale", "gain") else 0.0, jnp.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _init(g, inputs, seed=1):
  return jax.jit(g.init)(fast_key(seed), *inputs)


@pytest.fixture(scope="module")
def g32():
  g = Generator(32, nf=8, z_dim=Z, cond_dim=16, attn_resolutions=(16,))
  inputs = _inputs(jax.random.key(0))
  params = _init(g, inputs)
  return g, jax.jit(g.apply), params, _liven(params), inputs


def test_g32_shape_range_and_fp32_params(g32):
  _, apply, params, trained, inputs = g32
  for p in (params, trained):
    out = np.asarray(apply(p, *inputs))
    assert out.shape == (B, 32, 32, 3) and out.dtype == np.float32
    assert np.all(np.isfinite(out)) and out.min() >= -1.0 and out.max() <= 1.0
    assert out.std() > 1e-2  # not a constant image
    assert np.mean(np.abs(out) > 0.99) < 0.2  # not saturated (else comparisons are void)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  # The attention sits at 16x16 (block1 output at nf=8 -> 2*nf channels).
  assert params["params"]["attn16"]["query"]["kernel"].shape == (16, 16)
  assert float(params["params"]["attn16"]["gain"]) == 0.0


def test_g64_shape_and_range():
  g = Generator(64, nf=4, z_dim=Z, cond_dim=8, attn_resolutions=(16, 32))
  inputs = _inputs(jax.random.key(3))
  params = _numpy_params(g, inputs)
  assert {"attn16", "attn32", "block3"} <= set(params["params"])
  out = np.asarray(jax.jit(g.apply)(_liven(params), *inputs))
  assert out.std() > 1e-2 and np.mean(np.abs(out) > 0.99) < 0.2
  assert out.shape == (B, 64, 64, 3) and out.dtype == np.float32
  assert np.all(np.isfinite(out)) and out.min() >= -1.0 and out.max() <= 1.0


@pytest.mark.parametrize("resolution,blocks", [(128, 5), (256, 6)])
def test_large_resolutions_construct(resolution, blocks):
  g = Generator(resolution, nf=4, z_dim=Z, cond_dim=8, attn_resolutions=(16, 32))
  inputs = _inputs(jax.random.key(0))
  params = jax.eval_shape(g.init, fast_key(1), *inputs)
  out = jax.eval_shape(g.apply, params, *inputs)
  assert out.shape == (B, resolution, resolution, 3) and out.dtype == jnp.float32
  names = set(params["params"])
  assert f"block{blocks - 1}" in names and f"block{blocks}" not in names
  # DF-GAN channel schedule: 8*nf at 4x4, nf at the output.
  assert params["params"]["start"]["kernel"].shape[-1] == 4 * 4 * 8 * 4
  assert params["params"]["to_rgb"]["kernel"].shape == (3, 3, 4, 3)


def test_bfloat16_compute_keeps_fp32_params_and_output():
  g = Generator(32, nf=4, z_dim=Z, cond_dim=8, dtype=jnp.bfloat16)
  inputs = _inputs(jax.random.key(0))
  params = jax.eval_shape(g.init, fast_key(1), *inputs)  # trace only: dtype contract
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  out = jax.eval_shape(g.apply, params, *inputs)
  assert out.dtype == jnp.float32 and out.shape == (B, 32, 32, 3)


@pytest.mark.parametrize("resolution", [16, 48, 512])
def test_unsupported_resolution_raises(resolution):
  inputs = _inputs(jax.random.key(0))
  with pytest.raises(ValueError, match=r"allowed resolutions: 32, 64, 128, 256"):
    jax.eval_shape(Generator(resolution, z_dim=Z).init, fast_key(1), *inputs)


def test_bad_attn_resolution_raises():
  inputs = _inputs(jax.random.key(0))
  with pytest.raises(ValueError, match=r"allowed ones are \[8, 16, 32\]"):
    jax.eval_shape(Generator(32, nf=4, z_dim=Z, attn_resolutions=(64,)).init, fast_key(1), *inputs)


@pytest.mark.parametrize("rows", [(3, 2, 2), (2, 1, 2), (2, 2, 1)])
def test_inputs_of_different_batches_are_named(rows):
  """z of 3 rows with 2 texts failed in jnp.concatenate ('Cannot concatenate arrays with shapes
  that differ in dimensions other than the one being concatenated'); one text's words [1, 6, d]
  for two images were reshaped by the cross-attention into two rows of 3 tokens, failing only at
  the mask ('Incompatible shapes for broadcasting')."""
  z, sent, words, mask = _inputs(jax.random.key(0), batch=2)
  z = jnp.zeros((rows[0], Z))
  sent, words, mask = sent[:rows[1]], words[:rows[2]], mask[:rows[2]]
  with pytest.raises(ValueError, match=rf"one row per image; got batches of {rows[0]}, "
                     rf"{rows[1]} and {rows[2]} \(z \({rows[0]}, {Z}\)"):
    jax.eval_shape(Generator(32, nf=4, z_dim=Z).init, fast_key(1), z, sent, words, mask)


def test_sentence_changes_output(g32):
  _, apply, params, trained, (z, sent, words, mask) = g32
  other = sent + 1.0
  for p in (params, trained):  # at init the sentence enters via the 4x4 start
    a, b = apply(p, z, sent, words, mask), apply(p, z, other, words, mask)
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3
  # Deep fusion: with the sentence cut out of the 4x4 start, it still reaches the image
  # through the affine blocks.
  start = trained["params"]["start"]["kernel"]
  cut = jax.tree.map(lambda x: x, trained)
  cut["params"]["start"]["kernel"] = start.at[Z:].set(0.0)
  a, b = apply(cut, z, sent, words, mask), apply(cut, z, other, words, mask)
  assert float(jnp.max(jnp.abs(a - b))) > 1e-3


def test_word_states_change_output_via_attention(g32):
  _, apply, _, trained, (z, sent, words, mask) = g32
  # Only valid tokens change (new random states: a constant offset would be normalised away);
  # the sentence is fixed.
  other = words.at[:, :3].set(jax.random.normal(jax.random.key(7), (B, 3, D_TEXT)))
  a, b = apply(trained, z, sent, words, mask), apply(trained, z, sent, other, mask)
  assert float(jnp.max(jnp.abs(a - b))) > 1e-3
  # With the attention gain at zero the words have no other path into the image.
  closed = _set_gains(trained, 0.0)
  a, b = apply(closed, z, sent, words, mask), apply(closed, z, sent, other, mask)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_masked_tokens_do_not_affect_output(g32):
  _, apply, _, trained, (z, sent, words, mask) = g32
  noise = 100.0 * jax.random.normal(jax.random.key(9), words.shape)
  other = jnp.where(mask[..., None] > 0, words, noise)
  assert not np.array_equal(np.asarray(words), np.asarray(other))
  a, b = apply(trained, z, sent, words, mask), apply(trained, z, sent, other, mask)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # A fully masked row stays finite (no NaN from an empty softmax).
  empty = mask.at[1].set(0)
  assert bool(jnp.all(jnp.isfinite(apply(trained, z, sent, words, empty))))


def test_attention_leaves_a_row_without_valid_tokens_unchanged():
  attn = CrossAttention()
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))  # [batch, h, w, channels]
  words = jax.random.normal(jax.random.key(1), (2, 5, 6))  # [batch, length, dim]
  mask = jnp.array([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
  params = attn.init(jax.random.key(2), x, words, mask)["params"]
  params = {**params, "gain": jnp.float32(0.5),  # a trained gain and output bias
            "out": {**params["out"], "bias": jnp.full((8,), 0.3)}}
  y = attn.apply({"params": params}, x, words, mask)
  np.testing.assert_array_equal(np.asarray(y[1]), np.asarray(x[1]))
  assert float(jnp.max(jnp.abs(y[0] - x[0]))) > 0.1


def test_affine_is_scale_and_shift_from_one_shared_hidden_layer():
  from llmimg_jax.gan.generator import Affine
  x = np.random.default_rng(0).normal(size=(2, 3, 3, 4)).astype(np.float32)
  cond = np.random.default_rng(1).normal(size=(2, 5)).astype(np.float32)
  params = _random_params(Affine(4), x, cond)
  h = np.maximum(cond @ params["fc1"]["kernel"] + params["fc1"]["bias"], 0)  # [batch, 4]
  gb = h @ params["fc2"]["kernel"] + params["fc2"]["bias"]  # [batch, 8]: gamma, then beta
  want = x * gb[:, None, None, :4] + gb[:, None, None, 4:]
  got = Affine(4).apply({"params": params}, x, cond)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _layer_norm(x, p, eps=1e-6):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def test_cross_attention_against_numpy():
  """Two heads, scaled dot products over the valid tokens, the output projection, the gain; a
  row without valid tokens keeps x."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(3, 2, 2, 8)).astype(np.float32)
  words = rng.normal(size=(3, 5, 6)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], np.int32)
  attn = CrossAttention(num_heads=2)
  params = _random_params(attn, x, words, mask)
  q = _layer_norm(x.reshape(3, 4, 8), params["q_norm"]) @ params["query"]["kernel"]
  kv = _layer_norm(words, params["kv_norm"])
  k, v = kv @ params["key"]["kernel"], kv @ params["value"]["kernel"] + params["value"]["bias"]
  want = x.copy()
  for b in range(2):  # row 2 has no valid token
    valid = mask[b] > 0
    heads = []
    for h in range(2):
      cols = slice(4 * h, 4 * h + 4)
      logits = q[b, :, cols] @ k[b, valid, cols].T / np.sqrt(4)  # [positions, valid tokens]
      weights = np.exp(logits - logits.max(-1, keepdims=True))
      heads.append(weights / weights.sum(-1, keepdims=True) @ v[b, valid, cols])
    out = np.concatenate(heads, -1) @ params["out"]["kernel"] + params["out"]["bias"]
    want[b] += params["gain"] * out.reshape(2, 2, 8)
  got = attn.apply({"params": params}, x, words, mask)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_sentence_embedding_masked_mean():
  states = jnp.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
                      [[5.0, -1.0], [7.0, 7.0], [9.0, 9.0]]])
  mask = jnp.array([[1, 1, 0], [0, 0, 0]])
  out = np.asarray(sentence_embedding(states, mask))
  np.testing.assert_allclose(out, [[2.0, 3.0], [0.0, 0.0]])
  mask = jnp.array([[0, 0, 1], [1, 1, 1]])
  np.testing.assert_allclose(np.asarray(sentence_embedding(states, mask)),
                             [[100.0, 100.0], [7.0, 5.0]])


def test_upblock_equals_dfgan_order():
  """UpBlock runs the shortcut and the first fusion block before upsampling; the result must
  equal DF-GAN's order (upsample, then everything) with the same parameters."""
  from llmimg_jax.gan.common import upsample2x
  from llmimg_jax.gan.generator import DFBlock, UpBlock
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))  # [batch, h, w, in]
  cond = jax.random.normal(jax.random.key(1), (2, 10))
  block = UpBlock(6)
  params = _liven({"block": block.init(fast_key(0), x, cond)["params"]})["block"]
  conv = lambda name, h: nn.Conv(6, (3, 3)).apply({"params": params[name]}, h)
  fuse = lambda name, c, h: DFBlock(c).apply({"params": params[name]}, h, cond)
  up = upsample2x(x)
  shortcut = nn.Conv(6, (1, 1)).apply({"params": params["shortcut"]}, up)
  h = conv("conv1", fuse("fuse1", 6, conv("conv0", fuse("fuse0", 8, up))))
  np.testing.assert_allclose(block.apply({"params": params}, x, cond),
                             shortcut + params["gain"] * h, rtol=1e-5, atol=1e-5)


def test_upsample_conv_equals_conv_of_upsampled_incl_gradients_and_init():
  from llmimg_jax.gan.common import upsample2x
  from llmimg_jax.gan.generator import UpsampleConv3x3
  x = jax.random.normal(jax.random.key(0), (2, 5, 4, 3))  # [batch, h, w, in], odd h on purpose
  g = jax.random.normal(jax.random.key(1), (2, 10, 8, 6))
  ours, reference = UpsampleConv3x3(6), nn.Conv(6, (3, 3))
  params = ours.init(fast_key(0), x)["params"]
  ref_params = reference.init(fast_key(0), upsample2x(x))["params"]
  jax.tree.map(np.testing.assert_array_equal, params, ref_params)  # same tree, same init
  params = {"kernel": params["kernel"], "bias": params["bias"] + 0.1}

  def loss(module, p, x, up):
    return jnp.sum(module.apply({"params": p}, upsample2x(x) if up else x) * g)

  np.testing.assert_allclose(ours.apply({"params": params}, x),
                             reference.apply({"params": params}, upsample2x(x)), atol=1e-5)
  got = jax.grad(loss, argnums=(1, 2))(ours, params, x, False)
  want = jax.grad(loss, argnums=(1, 2))(reference, params, x, True)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4), got, want)


def test_upsample_conv_in_bf16_rounds_its_phase_kernel_once():
  """bf16 compute: the phase kernel's tap sums come from the fp32 kernel (rounded once), so the
  error vs fp32 is a plain bf16 conv's (from the bf16 kernel it was 1.2-1.6x that)."""
  from llmimg_jax.gan.common import upsample2x
  from llmimg_jax.gan.generator import UpsampleConv3x3, upsample_conv3x3
  from llmimg_jax.gan.layers import conv2d
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(k1, (8, 16, 16, 64))
  kernel = jax.random.normal(k2, (3, 3, 64, 64)) / 24  # fp32, as the params are
  truth = conv2d(upsample2x(x), kernel)
  xb = x.astype(jnp.bfloat16)
  def err(y):
    return float(jnp.linalg.norm(y.astype(jnp.float32) - truth) / jnp.linalg.norm(truth))
  ours = upsample_conv3x3(xb, kernel)
  assert ours.dtype == jnp.bfloat16
  assert err(ours) < 1.05 * err(conv2d(upsample2x(xb), kernel.astype(jnp.bfloat16)))
  dkernel = jax.grad(lambda k: jnp.sum(upsample_conv3x3(xb, k).astype(jnp.float32)))(kernel)
  assert dkernel.dtype == jnp.float32
  # The module hands its fp32 kernel over (it used to cast it to the compute dtype first).
  module = UpsampleConv3x3(64, dtype=jnp.bfloat16)
  y = module.apply({"params": {"kernel": kernel, "bias": jnp.zeros(64)}}, xb)
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(ours, np.float32))


def test_cross_attention_logits_of_bf16_queries_and_keys_are_fp32():
  """The q.k product is accumulated into fp32 (as T5's attention does), not rounded to bf16
  first: bf16 steps by 1 at logits ~200, which would flatten softmax weights."""
  attn = CrossAttention(num_heads=2, dtype=jnp.bfloat16)
  x, words, mask = jnp.ones((2, 4, 4, 8)), jnp.ones((2, 5, 6)), jnp.ones((2, 5), jnp.int32)
  params = attn.init(jax.random.key(0), x, words, mask)["params"]
  jaxpr = jax.make_jaxpr(lambda p: attn.apply({"params": p}, x, words, mask))(params).jaxpr
  logits = [e.outvars[0].aval for e in jaxpr.eqns if e.primitive.name == "dot_general"
            and e.outvars[0].aval.shape == (2, 2, 16, 5)]  # [batch, heads, hw, length]
  assert [a.dtype for a in logits] == [jnp.float32], logits


@pytest.mark.parametrize("matmul_reductions", [True, False])
def test_cross_attention_output_bias_gradient_in_bf16_is_summed_in_fp32(monkeypatch,
                                                                        matmul_reductions):
  """The output projection's bias gradient sums over the batch and every pixel; with bf16
  compute nn.Dense's ran in bf16 (2.6% off here); it sums in fp32 now, as the convs' biases do
  (layers.add_bias), 0.2% off: the fp32 sum rounded to the bf16 bias's gradient. With gain 1 and
  a bf16 cotangent, the exact gradient is its plain sum."""
  from llmimg_jax.gan import layers
  monkeypatch.setattr(layers, "MATMUL_REDUCTIONS", matmul_reductions)
  attn = CrossAttention(dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (16, 16, 16, 64))  # [batch, h, w, channels]
  words = jax.random.normal(jax.random.key(1), (16, 6, 12))  # [batch, length, dim]
  mask = jnp.ones((16, 6), jnp.int32)
  params = {**attn.init(jax.random.key(2), x, words, mask)["params"], "gain": jnp.float32(1.0)}
  cotangent = jax.random.normal(jax.random.key(3), x.shape).astype(jnp.bfloat16)

  def loss(p):
    return jnp.sum(attn.apply({"params": p}, x, words, mask).astype(jnp.float32) * cotangent)

  got = np.asarray(jax.grad(loss)(params)["out"]["bias"], np.float64)
  want = np.asarray(cotangent, np.float64).sum((0, 1, 2))
  assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.01
