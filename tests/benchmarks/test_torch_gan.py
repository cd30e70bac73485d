"""The PyTorch twin used by benchmarks/run.py is the same model as ours: parameter counts, output
shapes and (with converted weights) outputs, plus one PyTorch training step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from benchmarks import torch_gan, torch_train  # noqa: E402
from llmimg_jax import gan  # noqa: E402
from llmimg_jax.gan import diffaugment  # noqa: E402
from llmimg_jax.text import T5Config, T5EncoderModel  # noqa: E402

TEXT_DIM, LENGTH, BATCH = 48, 10, 2


def _t(x) -> "torch.Tensor":
  return torch.from_numpy(np.array(x))


@pytest.fixture(autouse=True)
def _one_torch_thread():
  # The CI/dev machines share 2 cores; one thread avoids OpenMP spin-wait stalls. Restored after.
  n = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(n)


def _random_params(module, *args, seed: int = 0):
  """Random params of `module`'s shapes, filled on the host (no init compile): kernels scaled by
  1/sqrt(fan_in), norms and gains near 1, DF affine outputs near (gamma=1, beta=0), so no
  zero-init path is switched off and the outputs are not saturated."""
  rs = np.random.RandomState(seed)
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)["params"]

  def fill(path, leaf):
    names = [getattr(k, "key", str(k)) for k in path]
    shape = leaf.shape
    noise = rs.standard_normal(shape).astype(np.float32)
    if names[-1] == "kernel":
      return noise / np.sqrt(np.prod(shape[:-1]))
    if names[-1] in ("scale", "weight", "gain"):
      return 1.0 + 0.1 * noise
    if names[-1] == "bias" and names[-2] == "fc2":  # [gamma, beta]
      half = shape[0] // 2
      return np.concatenate([np.ones(half, np.float32), np.zeros(half, np.float32)]) + 0.1 * noise
    return 0.1 * noise  # biases, embeddings, relative attention bias

  return jax.tree_util.tree_map_with_path(lambda p, x: fill(p, x).astype(np.float32), shapes)


def _top_counts(params) -> dict[str, int]:
  return {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in params.items()}


def _inputs(resolution: int):
  rs = np.random.RandomState(0)
  z = rs.standard_normal((BATCH, 100)).astype(np.float32)
  words = rs.standard_normal((BATCH, LENGTH, TEXT_DIM)).astype(np.float32)
  mask = (np.arange(LENGTH)[None] < np.array([[3], [LENGTH]])).astype(np.int32)
  images = rs.uniform(-1, 1, (BATCH, resolution, resolution, 3)).astype(np.float32)
  sent = ((words * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)).astype(np.float32)
  return z, words, mask, sent, images


@pytest.mark.parametrize("resolution,attn", [(32, (16,)), (64, (16, 32))])
def test_same_params_shapes_and_outputs(resolution, attn):
  z, words, mask, sent, images = _inputs(resolution)
  g = gan.Generator(resolution, nf=16, cond_dim=64, attn_resolutions=attn)
  d = gan.Discriminator(resolution, nf=16, cond_dim=64)
  g_params = _random_params(g, z, sent, words, mask)
  d_params = _random_params(d, images, sent)
  tg = torch_gan.Generator(resolution, nf=16, cond_dim=64, attn_resolutions=attn,
                           text_dim=TEXT_DIM)
  td = torch_gan.Discriminator(resolution, nf=16, cond_dim=64, text_dim=TEXT_DIM)
  assert torch_gan.top_level_counts(tg) == _top_counts(g_params)
  assert torch_gan.top_level_counts(td) == _top_counts(d_params)
  assert torch_gan.count_params(tg) == sum(x.size for x in jax.tree.leaves(g_params))

  torch_gan.load_flax_params(tg, g_params)
  torch_gan.load_flax_params(td, d_params)
  out = np.asarray(jax.jit(g.apply)({"params": g_params}, z, sent, words, mask))
  d_out = jax.jit(d.apply)({"params": d_params}, images, sent)
  with torch.no_grad():
    t_out = tg(_t(z), _t(sent), _t(words), _t(mask)).permute(0, 2, 3, 1).numpy()
    t_d = td(_t(images).permute(0, 3, 1, 2), _t(sent))
  assert t_out.shape == out.shape == (BATCH, resolution, resolution, 3)
  assert 0.05 < np.abs(out).mean() < 0.99  # not saturated: the comparison means something
  np.testing.assert_allclose(t_out, out, atol=2e-4)
  assert d_out.keys() == t_d.keys()
  for k in d_out:
    np.testing.assert_allclose(t_d[k].numpy(), np.asarray(d_out[k]), atol=2e-4, rtol=1e-4)
  # The twin's MA-GP (from D's own forward, D in channels_last as the twin builds it) is ours.
  td = td.to(memory_format=torch.channels_last)
  x, s = _t(images).permute(0, 3, 1, 2).requires_grad_(True), _t(sent).requires_grad_(True)
  t_gp = torch_train.ma_gp(td.logits(td.features(x), s), x, s, k=2.0, p=6.0)
  apply = lambda method, *a: d.apply({"params": d_params}, *a, method=method)  # noqa: E731
  gp = gan.ma_gp(lambda x_, s_: apply(d.logits, apply(d.features, x_), s_), images, sent)
  np.testing.assert_allclose(float(t_gp.detach()), float(gp), rtol=1e-3)
  assert float(gp) > 1e-3


def test_text_encoder_conversion():
  cfg = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=0,
                 num_heads=4, feed_forward_proj="gated-gelu", dropout_rate=0.0)
  ids = jnp.array([[5, 9, 3, 1, 0, 0], [7, 2, 2, 4, 8, 1]], jnp.int32)
  mask = (ids > 0).astype(jnp.int32)
  model = T5EncoderModel(cfg)
  params = _random_params(model, ids, mask)
  hf = transformers.T5EncoderModel(transformers.T5Config(
      vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
      feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False))
  torch_gan.load_flax_t5_encoder(hf, params)
  assert torch_gan.count_params(hf) == sum(x.size for x in jax.tree.leaves(params))
  with torch.no_grad():
    out = hf(input_ids=_t(ids).long(), attention_mask=_t(mask).long()).last_hidden_state
  ours = jax.jit(model.apply)({"params": params}, ids, mask)
  np.testing.assert_allclose(out.numpy(), np.asarray(ours), atol=1e-5)


def test_translate_matches_jax():
  x = np.random.RandomState(0).standard_normal((3, 8, 8, 2)).astype(np.float32)
  dh, dw = np.array([2, -1, 8]), np.array([0, 3, -5])
  want = np.asarray(diffaugment.translate(x, dh, dw))
  got = torch_train.translate(_t(x).permute(0, 3, 1, 2), _t(dh), _t(dw)).permute(0, 2, 3, 1)
  np.testing.assert_array_equal(got.numpy(), want)


def test_color_and_cutout_match_jax_given_the_same_draws(monkeypatch):
  """The twin's colour and cutout on JAX's random draws (fed in the order the twin asks): equal."""
  x = np.random.RandomState(1).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)  # [b, h, w, c]
  key = jax.random.PRNGKey(3)
  draws = [np.asarray(diffaugment._uniform(k, 4, jnp.float32)) for k in jax.random.split(key, 3)]
  monkeypatch.setattr(torch_train, "_uniform", lambda b, like: _t(draws.pop(0)))
  got = torch_train.color(_t(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
  np.testing.assert_allclose(got.numpy(), np.asarray(diffaugment.color(x, key)), atol=1e-6)
  kh, kw = jax.random.split(key)
  offsets = [np.asarray(jax.random.randint(k, (4, 1, 1, 1), 0, 16 + 1)) for k in (kh, kw)]
  monkeypatch.setattr(torch_train.torch, "randint",
                      lambda lo, hi, shape, device: _t(offsets.pop(0)))
  got = torch_train.cutout(_t(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
  want = np.asarray(diffaugment.cutout(x, key))
  np.testing.assert_array_equal(got.numpy(), want)
  assert 0 < (want == 0).mean() < 0.5


def _small_twin(diffaugment: str = "color,translation,cutout", grad_clip: float = 0.0,
                fused_adam: bool = True):
  """(config, twin, batch of 4): a 32px nf 8 twin with every loss term on and a one-layer
  trainable T5, built from torch's seed 0."""
  ml_collections = pytest.importorskip("ml_collections")
  cfg = ml_collections.ConfigDict(dict(
      model=dict(resolution=32, nf_g=8, nf_d=8, z_dim=16, cond_dim=16, attn_resolutions=(16,)),
      text=dict(mode="trainable"),
      loss=dict(gp="ma_gp", magp_k=2.0, magp_p=6.0, gp_every=1, contrastive_weight=0.2,
                contrastive_temperature=0.1, contrastive_g=True, diffaugment=diffaugment),
      train=dict(lr_g=1e-4, lr_d=4e-4, lr_text=4e-4, b1=0.0, b2=0.9, ema_decay=0.999,
                 grad_clip=grad_clip)))
  torch.manual_seed(0)
  hf = transformers.T5EncoderModel(transformers.T5Config(
      vocab_size=64, d_model=TEXT_DIM, d_kv=12, d_ff=64, num_layers=1, num_heads=4,
      feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False))
  twin = torch_train.build(cfg, hf, "cpu", fused_adam=fused_adam)
  batch = {"image": torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8),
           "input_ids": torch.randint(2, 64, (4, LENGTH)),
           "attention_mask": (torch.arange(LENGTH)[None] < torch.tensor([[3], [10], [6], [1]]))
           .long()}
  return cfg, twin, batch


def test_torch_train_step_updates_everything():
  cfg, m, batch = _small_twin()
  before = {name: [p.detach().clone() for p in mod.parameters()] for name, mod in
            [("g", m.generator), ("d", m.discriminator), ("t", m.text_encoder),
             ("ema", m.ema_generator)]}
  text_forwards, d_forwards = [], []
  hooks = [m.text_encoder.register_forward_hook(lambda *_: text_forwards.append(1)),
           m.discriminator.conv_img.register_forward_hook(lambda *_: d_forwards.append(1))]
  d_grads = []  # D's gradients as D's optimizer used them; G's half must not add to them
  d_step = m.d_opt.step
  m.d_opt.step = lambda: (d_grads.extend(p.grad.clone() for p in m.discriminator.parameters()),
                          d_step())
  metrics = torch_train.train_step(m, batch)
  m.d_opt.step = d_step
  for hook in hooks:
    hook.remove()
  assert all(torch.equal(g, p.grad) for g, p in zip(d_grads, m.discriminator.parameters()))
  assert bool(metrics["finite"]) and m.step == 1
  # The same work as the JAX step: one T5 forward serves both halves; D runs on the real and the
  # detached fake batch, then on the fakes for G. MA-GP differentiates the real batch's forward.
  assert len(text_forwards) == 1 and len(d_forwards) == 3
  for name, mod in [("g", m.generator), ("d", m.discriminator), ("t", m.text_encoder),
                    ("ema", m.ema_generator)]:
    changed = sum(not torch.equal(a, b) for a, b in zip(before[name], mod.parameters()))
    assert changed > 0.5 * len(before[name]), f"{name}: only {changed} tensors changed"
  decay = min(cfg.train.ema_decay, (1.0 + 0) / (10.0 + 0))  # the EMA warm-up at step 0: 0.1
  for ema_before, ema, g in zip(before["ema"], m.ema_generator.parameters(),
                                m.generator.parameters()):
    moved = g.detach() - ema_before  # G's first update (~lr): the EMA moves by (1 - decay) of it
    torch.testing.assert_close(ema - ema_before, (1 - decay) * moved, rtol=0,
                               atol=1e-3 * float(moved.abs().max()) + 1e-9)
  images = torch_train.generate_images(m, torch.randn(4, 16), batch["input_ids"],
                                       batch["attention_mask"])
  assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32)
  assert images.is_inference()  # sampling is timed without autograd bookkeeping, as ours
  cfg.loss.gp_every = 2  # ours skips the penalty between its steps; the twin would not
  with pytest.raises(NotImplementedError, match="gp_every=2 .* not mirrored"):
    torch_train.train_step(m, batch)


def test_torch_train_step_equals_ours():
  """One twin step and one of ours from the same weights, batch and noise: the same losses,
  gradient norms and updated parameters, so the benchmark times the same function (DiffAugment
  off: its random draws differ between the frameworks)."""
  import functools
  from benchmarks import gan_bench
  from llmimg_jax.train.state import build_models, build_text, init_state
  from llmimg_jax.train.step import train_step
  cfg = gan_bench.make_config(32, 4, 8, "float32")
  cfg.loss.diffaugment = ""
  cfg.text.update(d_model=32, d_ff=32, num_layers=1, num_heads=2, d_kv=16, max_length=12)
  _, t5_config, _ = build_text(cfg)
  models = build_models(cfg, t5_config)
  state = jax.jit(functools.partial(init_state, models))(jax.random.key(0), None)
  rs = np.random.RandomState(0)
  gains_on = lambda tree: jax.tree_util.tree_map_with_path(  # noqa: E731  (zero-init gains)
      lambda p, x: x + 0.3 * rs.standard_normal(x.shape).astype(np.float32)
      if getattr(p[-1], "key", "") == "gain" else x, jax.device_get(tree))
  g = gains_on(state.g_params)
  state = state.replace(g_params=g, ema_params=g, d_params=gains_on(state.d_params))
  twin = gan_bench._torch_twin(cfg, models, state, torch.device("cpu"), None)
  batch = gan_bench._batch(cfg, t5_config.vocab_size)
  # z as train_step draws it (the first of four keys of fold_in(rng, step)).
  k_z = jax.random.split(jax.random.fold_in(state.rng, state.step), 4)[0]
  z = np.asarray(jax.random.normal(k_z, (4, cfg.model.z_dim)))
  randn = torch.randn
  torch.randn = lambda *a, **k: _t(z)
  try:
    theirs = torch_train.train_step(twin, {
        "image": _t(batch["image"]).permute(0, 3, 1, 2).contiguous(),
        "input_ids": _t(batch["input_ids"]).long(),
        "attention_mask": _t(batch["attention_mask"]).long()})
  finally:
    torch.randn = randn
  before = state
  ours, metrics = jax.jit(functools.partial(train_step, models))(state, batch)
  for k in ("d_loss", "g_loss", "d_hinge", "grad_norm_d", "grad_norm_g", "grad_norm_text"):
    np.testing.assert_allclose(float(theirs[k]), float(metrics[k]), rtol=1e-4, err_msg=k)
  # Adam's first step moves each weight by ~lr * sign(gradient): compare the updates, allowing
  # a few signs of near-zero gradients to differ.
  for module, new, old in [(twin.generator, ours.g_params, before.g_params),
                           (twin.discriminator, ours.d_params, before.d_params),
                           (twin.ema_generator, ours.ema_params, before.ema_params)]:
    want = torch_gan.flax_to_state_dict(jax.device_get(new))
    start = torch_gan.flax_to_state_dict(jax.device_get(old))
    got = module.state_dict()
    off = sum(int(((got[k] - want[k]).abs() > 0.1 * (want[k] - start[k]).abs() + 1e-7).sum())
              for k in want)
    assert off <= 1e-3 * sum(v.numel() for v in want.values()), (type(module).__name__, off)


def test_cross_attention_leaves_a_row_without_valid_tokens_unchanged_as_ours():
  """A caption row with no valid token: ours adds nothing to the image there (not the output
  Dense's bias through the gain); the twin's equal outputs must hold for it too."""
  from llmimg_jax.gan.generator import CrossAttention
  rs = np.random.RandomState(0)
  x = rs.standard_normal((2, 4, 4, 8)).astype(np.float32)  # [b, h, w, c]
  words = rs.standard_normal((2, 5, 6)).astype(np.float32)  # [b, L, d]
  mask = np.array([[0, 0, 0, 0, 0], [1, 1, 1, 0, 0]], np.int32)
  attn = CrossAttention(num_heads=2)
  params = _random_params(attn, x, words, mask)
  out = np.asarray(jax.jit(attn.apply)({"params": params}, x, words, mask))
  twin = torch_gan.CrossAttention(8, 6, num_heads=2)
  torch_gan.load_flax_params(twin, params)
  with torch.no_grad():
    got = twin(_t(x).permute(0, 3, 1, 2), _t(words), _t(mask)).permute(0, 2, 3, 1).numpy()
  np.testing.assert_array_equal(out[0], x[0])  # ours: the row without tokens is unchanged
  np.testing.assert_allclose(got, out, atol=1e-5)


def test_torch_train_step_clips_gradients_as_ours():
  """With config.train.grad_clip set, ours (train.state._adam) clips each optimizer's gradients
  to that global norm and reports the norms before clipping; the twin ignored the setting."""
  _, m, batch = _small_twin(diffaugment="", grad_clip=1e-3)
  used = {}  # the global norm of the gradients each optimizer stepped with
  for name, opt in [("d", m.d_opt), ("text", m.text_opt), ("g", m.g_opt)]:
    params = [p for group in opt.param_groups for p in group["params"]]
    opt.step = lambda params=params, name=name, step=opt.step: (
        used.setdefault(name, float(torch_train._grad_norm(params))), step())
  metrics = torch_train.train_step(m, batch)
  for name in ("d", "text", "g"):
    assert float(metrics[f"grad_norm_{name}"]) > 10 * 1e-3, name  # reported before clipping
    np.testing.assert_allclose(used[name], 1e-3, rtol=1e-4, err_msg=name)


@pytest.mark.parametrize("fused_adam", [True, False])  # run.py's twin; twin_ab.py's other
def test_torch_optimizers_are_ours_over_several_steps(fused_adam):
  """Each of the twin's three Adams (G, D, text encoder) updates its parameters as ours
  (train.state._adam from the same config) does from the same parameters, gradients and
  optimizer state, over three twin steps. A first Adam step cannot tell: it moves every weight by
  ~lr * sign(gradient) whatever b1, b2 and eps (test_torch_train_step_equals_ours is one step)."""
  from llmimg_jax.train.state import _adam
  cfg, m, batch = _small_twin(fused_adam=fused_adam)
  assert bool(m.g_opt.defaults["fused"]) == fused_adam
  seen = {}  # optimizer -> [(params before, gradients, params after)], one per step
  for name, opt in [("g", m.g_opt), ("d", m.d_opt), ("text", m.text_opt)]:
    params = [p for group in opt.param_groups for p in group["params"]]

    def step(params=params, name=name, step=opt.step):
      before, grads = [p.detach().clone() for p in params], [p.grad.clone() for p in params]
      step()
      seen.setdefault(name, []).append((before, grads, [p.detach().clone() for p in params]))
    opt.step = step
  for _ in range(3):
    torch_train.train_step(m, batch)
  lrs = {"g": cfg.train.lr_g, "d": cfg.train.lr_d, "text": cfg.train.lr_text}
  for name, steps in seen.items():
    assert len(steps) == 3, name
    tx = _adam(lrs[name], cfg)
    state, update = tx.init([p.numpy() for p in steps[0][0]]), jax.jit(tx.update)  # op by op: 3x
    for i, (before, grads, after) in enumerate(steps):
      updates, state = update([g.numpy() for g in grads], state, [p.numpy() for p in before])
      for b, u, a in zip(before, updates, after):
        b, a = b.numpy(), a.numpy()
        # A wrong b2 (torch's default 0.999) moves step 2's updates by up to ~3% of lr.
        tol = 1e-3 * lrs[name] + 2 * np.spacing(np.abs(b))  # rounding of b + u
        assert np.all(np.abs(a - (b + np.asarray(u))) <= tol), (name, i, b.shape)
