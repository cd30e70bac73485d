"""The jitted train step: data-parallel equivalence, and config errors before compilation."""
import json
import logging
import time

import jax
import numpy as np
import pytest

from llmimg_jax import cpus
from llmimg_jax.gan import layers
from llmimg_jax.train import loop
from llmimg_jax.train.config import validate
from llmimg_jax.train.state import build_models, build_text
from tests.train.utils import (_batch, _host_state, _log_window, tiny_config,
                               tiny_pretrained_t5)


def _one_step(config, devices):
  mesh = loop.make_mesh(devices)
  tokenizer, t5_config, _ = build_text(config)
  models = build_models(config, t5_config)
  state = loop.create_state(models, mesh, config.seed)
  batch = jax.device_put(_batch(config, tokenizer),
                         jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  state, metrics = loop.jit_train_step(models, mesh)(state, batch)
  return jax.device_get(state), jax.device_get(metrics)


def test_batch_chunks_only_on_one_cpu_device_with_several_cores(monkeypatch):
  one, eight = loop.make_mesh(jax.devices()[:1]), loop.make_mesh(jax.devices())
  monkeypatch.setattr(cpus, "usable_cpus", lambda: 2)
  assert (loop.batch_chunks(one), loop.batch_chunks(eight)) == (loop.CPU_BATCH_CHUNKS, 1) == (2, 1)
  monkeypatch.setattr(cpus, "usable_cpus", lambda: 1)
  assert loop.batch_chunks(one) == 1


def test_eight_devices_equal_one_device(tmp_path, monkeypatch):
  """Also checks the batch chunks: one device runs G and D on two batch slices, eight on none."""
  assert jax.device_count() == 8, "tests/conftest.py should simulate 8 CPU devices"
  monkeypatch.setattr(cpus, "usable_cpus", lambda: 2)
  config = tiny_config(tmp_path)
  assert config.train.batch_size % 2 == 0
  state_1, metrics_1 = _one_step(config, jax.devices()[:1])
  state_8, metrics_8 = _one_step(config, jax.devices())
  assert int(state_8.step) == 1 and metrics_8["finite"] == 1.0
  for name in ("g_params", "d_params", "text_params", "ema_params"):
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                         getattr(state_1, name), getattr(state_8, name))
    assert max(jax.tree.leaves(diffs)) <= 1e-5, name
  # The step really moved the parameters (the comparison above is not trivially true).
  fresh = loop.create_state(build_models(config, build_text(config)[1]),
                            loop.make_mesh(jax.devices()[:1]), config.seed)
  for name in ("g_params", "d_params", "text_params"):  # text: through D's loss, via the vjp
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), getattr(fresh, name),
                         getattr(state_8, name))
    assert max(jax.tree.leaves(moved)) > 1e-5, name
  np.testing.assert_allclose(metrics_1["d_loss"], metrics_8["d_loss"], rtol=1e-5)


def test_the_accelerator_forms_of_the_step_equal_the_cpu_forms(tmp_path, monkeypatch):
  """GPUs and TPUs run the step without the CPU-only forms: autodiff's bias and affine reductions
  (layers.MATMUL_REDUCTIONS), XLA's 3x3 convs with 3 channels on one side (layers.NARROW_CONVS),
  one batch chunk (loop.batch_chunks) and no XLA:CPU options (loop.compiler_options). Forced
  here, one step from a mid-training state on 8 devices (a pod's data-parallel program) gives
  the state and metrics of the CPU forms on one device."""
  config = tiny_config(tmp_path)
  tokenizer, t5_config, _ = build_text(config)
  models = build_models(config, t5_config)
  batch = _batch(config, tokenizer)
  monkeypatch.setattr(cpus, "usable_cpus", lambda: 2)
  used = set()  # the CPU forms' own functions that a step traced

  def spy(name):
    fn = getattr(layers, name)
    monkeypatch.setattr(layers, name, lambda *a: used.add(name) or fn(*a))
  cpu_only = ("channel_sum", "spatial_sum", "_conv3x3_taps_matmul")
  for name in cpu_only:
    spy(name)

  def step(mesh):
    used.clear()
    state = jax.device_put(_host_state(models), jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))
    return jax.device_get(loop.jit_train_step(models, mesh)(state, batch))

  one = loop.make_mesh(jax.devices()[:1])
  cpu_state, cpu_metrics = step(one)
  assert used == set(cpu_only) and loop.batch_chunks(one) == 2 and loop.compiler_options(one)
  monkeypatch.setattr(layers, "MATMUL_REDUCTIONS", False)
  monkeypatch.setattr(layers, "NARROW_CONVS", False)
  monkeypatch.setattr(loop, "batch_chunks", lambda mesh: 1)
  monkeypatch.setattr(loop, "compiler_options", lambda mesh: {})
  state, metrics = step(loop.make_mesh(jax.devices()))
  assert not used and metrics["finite"] == 1.0
  for k in ("d_loss", "g_loss", "gp"):
    np.testing.assert_allclose(metrics[k], cpu_metrics[k], rtol=1e-5, err_msg=k)
  for name in ("g_params", "d_params", "text_params", "ema_params", "g_opt_state",
               "d_opt_state"):
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), getattr(state, name),
                         getattr(cpu_state, name))
    assert max(jax.tree.leaves(diffs)) <= 1e-5, name


@pytest.mark.parametrize("key, value, match", [
    ("train.batch_size", 12, "not divisible by the 8 devices"),
    ("model.resolution", 48, "resolution=48 is not supported"),
    ("data.image_size", 64, "differs from config.model.resolution"),
    ("loss.gp", "wgan", "config.loss.gp"),
    ("loss.diffaugment", "color,flip",
     r"config.loss.diffaugment: Unknown DiffAugment op\(s\) \['flip'\]"),
    ("model.attn_resolutions", (64,),
     r"attn_resolutions=\(64,\) contains \[64\]; at resolution 32 use a subset of \[8, 16, 32\]"),
    ("text.max_length", 1, "max_length=1 must be >= 2"),
    ("text.mode", "frozen", "needs a pretrained T5 in config.text.checkpoint"),
    ("train.max_bad_steps", 0, "max_bad_steps=0 must be positive"),
    ("train.keep_checkpoints", 0, "keep_checkpoints=0 must be positive.*0 would keep none"),
    # True is stored as 1.0 (a float field), which would crop nothing.
    ("data.random_crop", True, r"random_crop=1\.0: give the smallest crop side as a fraction"),
    ("data.random_crop", -0.1, r"random_crop=-0\.1: give the smallest crop side"),
    # Captions that state sizes and places, made untrue by crops.
    ("data.random_crop", 0.8, r"random_crop=0\.8 with data\.name='captioned_shapes': its captions "
                              r"state each object's size and place .* set data\.random_crop=0"),
    ("train.samples_per_prompt", 0, "samples_per_prompt=0 must be positive"),
    ("train.sample_prompts", (), "sample_prompts is empty"),
    ("train.sample_prompts", ("a red circle", " "), r"sample_prompts=.*non-blank prompts"),
    ("train.batch_size", 1, "batch_size=1 must be >= 2: D's mismatched pairs"),
    ("train.grad_clip", -1.0, r"config\.train\.grad_clip=-1\.0 must be >= 0 \(0 = off\)"),
    ("train.lr_d", -4e-4, r"config\.train\.lr_d=-0\.0004 must be >= 0"),
    ("train.b2", 1.0, r"config\.train\.b2=1\.0 must be in \[0, 1\)"),
    ("train.ema_decay", -1.0, r"config\.train\.ema_decay=-1\.0 must be in \[0, 1\)"),
    ("loss.contrastive_temperature", 0.0, r"contrastive_temperature=0\.0 must be > 0"),
    ("loss.magp_p", 1.5, r"config\.loss\.magp_p=1\.5 must be >= 2"),
    ("text.num_heads", 0, r"text\.d_model=32 must be a multiple of config\.text\.num_heads=0"),
    ("text.num_heads", 3, r"text\.d_model=32 must be a multiple of config\.text\.num_heads=3"),
    ("text.d_ff", 0, r"config\.text: T5Config\.d_ff must be a positive int, got 0"),
    ("text.feed_forward_proj", "gated-swishy", r"config\.text: Unsupported T5 feed_forward_proj"),
    ("seed", 2**32, r"config\.seed=4294967296 must be in \[0, 2\*\*32\)"),
    ("seed", -1, r"config\.seed=-1 must be in \[0, 2\*\*32\)"),
    ("data.max_pixels", -1, r"config\.data\.max_pixels=-1 must be >= 0"),
    # grain raised these as tracebacks once the model was built (exit 1, not 2)
    ("data.num_workers", -1, r"config\.data\.num_workers=-1 must be >= 0 \(0 = in this process\)"),
    ("data.worker_buffer_size", -1, r"config\.data\.worker_buffer_size=-1 must be >= 0"),
    ("data.read_threads", -1, r"config\.data\.read_threads=-1 must be >= 0"),
    ("data.read_buffer_size", -3, r"config\.data\.read_buffer_size=-3 must be >= 0"),
    ("data.build_num_proc", -1,  # built in one process without a word
     r"config\.data\.build_num_proc=-1 must be >= 0 \(0 = automatic\)"),
    # --config.data.data_dir=$DIR with DIR unset read and built ~/tensorflow_datasets, not even
    # $TFDS_DATA_DIR, without a word
    ("data.data_dir", "", r"^config\.data\.data_dir is blank \(e\.g\. --config\.data\.data_dir="
                          r"\$DIR with DIR unset\); name the TFDS data directory"),
    ("data.data_dir", " ", r"^config\.data\.data_dir is blank"),
    ("data.folder", "/photos",
     r"data\.folder='/photos' is read by captioned_folder only, but config\.data\.name="
     r"'captioned_shapes'"),
    ("train.grad_clip", None, r"config\.train\.grad_clip=None: give a number \(the default is "
                              r"0\.0\)\.$"),  # a TypeError in the range checks before
    ("loss.magp_p", None, r"config\.loss\.magp_p=None: give a number"),
    # None in a config file for these was an AttributeError or TypeError traceback (exit 1)...
    ("model.attn_resolutions", None,
     r"config\.model\.attn_resolutions=None: give a tuple \(the default is \(16,\)\)\.$"),
    ("loss.diffaugment", None, r"config\.loss\.diffaugment=None: give a str \(the default is "),
    ("text.feed_forward_proj", None, r"config\.text\.feed_forward_proj=None: give a str"),
    # ...or turned a default-on option off without a word
    ("loss.contrastive_g", None, r"config\.loss\.contrastive_g=None: give True or False \(the "
                                 r"default is True\)\.$"),
    ("train.steps", 0, "steps=0 must be positive"),
    # was "config.eval.every=0 must be >= 0 (0 = off) and ...": a valid value blamed too
    ("eval.num_samples", 1, r"^config\.eval\.num_samples=1 must be >= 2\.$"),
    ("eval.every", -1, r"^config\.eval\.every=-1 must be >= 0 \(0 = off\)\.$"),
    ("train.lr_text", -1e-4, r"config\.train\.lr_text=-0\.0001 must be >= 0"),
    # inf passed every bound (inf >= 0): non-finite parameters after the first update
    ("train.lr_g", float("inf"), r"config\.train\.lr_g=inf must be finite\.$"),
    ("loss.r1_gamma", float("inf"), r"config\.loss\.r1_gamma=inf must be finite\.$"),
    ("loss.contrastive_temperature", float("inf"), r"contrastive_temperature=inf must be finite"),
    ("train.lr_d", float("nan"), r"config\.train\.lr_d=nan must be >= 0\.$"),
])
def test_bad_config_fails_fast(tmp_path, key, value, match):
  config = tiny_config(tmp_path)
  *section, name = key.split(".")
  (config[section[0]] if section else config)[name] = value
  start = time.perf_counter()
  with pytest.raises(ValueError, match=match):
    validate(config, jax.device_count())
  assert time.perf_counter() - start < 1.0


def test_a_config_lacking_keys_or_no_config_dict_is_named_with_the_fix(tmp_path):
  """A get_config() that deleted keys or returned a dict: an AttributeError traceback from
  validate() (train.py's status 1), naming one key or none."""
  config = tiny_config(tmp_path)
  del config.eval
  del config.train.steps
  start = r"start get_config\(\) from llmimg_jax\.train\.config\.base_config\(\), which has "
  with pytest.raises(ValueError, match=rf"^the config lacks config\.eval, config\.train\.steps: "
                                       rf"{start}every key \(the defaults are there\)"):
    validate(config, jax.device_count())
  with pytest.raises(ValueError, match=rf"^the config is a dict, not an ml_collections "
                                       rf"ConfigDict: {start}every key, and set what differs\.$"):
    validate({"train": {"steps": 2}}, jax.device_count())
  with pytest.raises(ValueError, match=r"^the config is a dict"):  # train() read its .data first
    loop.train({"train": {"steps": 2}}, tmp_path / "run")
  # The start these errors advise is valid as it is (data.image_size 32, model.resolution was 64).
  from llmimg_jax.train.config import base_config
  validate(base_config(), jax.device_count())


def test_a_config_files_keep_all_checkpoints_takes_a_number_on_the_command_line(tmp_path):
  """train.keep_checkpoints = None in a config file (keep all, as validate() advises) made the
  field untyped: --config.train.keep_checkpoints=5 was ml_collections' "Type <class 'NoneType'>
  of field config.train.keep_checkpoints is not supported for overriding"."""
  from absl import flags
  from ml_collections import config_flags
  config_file = tmp_path / "keep_all.py"
  config_file.write_text("from llmimg_jax.train.config import base_config\n\n\n"
                         "def get_config():\n  c = base_config()\n"
                         "  c.train.keep_checkpoints = None\n  return c\n")
  for overrides, keep in (((), None), (("--config.train.keep_checkpoints=5",), 5)):
    argv = ["train.py", f"--config={config_file}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    assert flag_values.config.train.keep_checkpoints == keep
    assert json.loads(flag_values.config.to_json())["train"]["keep_checkpoints"] == keep


def test_model_dtype_is_refused_alike_by_validate_and_build_models(tmp_path):
  """validate() and build_models (which a sampler runs on a run's saved config) had each their
  own check, with two messages."""
  config = tiny_config(tmp_path)
  config.model.dtype = "float16"
  t5_config = build_text(config)[1]
  for check in (lambda: validate(config, jax.device_count()),
                lambda: build_models(config, t5_config)):
    with pytest.raises(ValueError, match=r"^config\.model\.dtype='float16' is not supported; use "
                                         r"one of \('float32', 'bfloat16'\)\.$"):
      check()


def test_frozen_pretrained_text_encoder_with_bf16_compute(tmp_path):
  """mode='frozen' loads a HF checkpoint's encoder, never changes it; bf16 compute stays finite."""
  config = tiny_config(tmp_path)
  config.text.mode = "frozen"
  config.text.checkpoint = tiny_pretrained_t5(tmp_path / "t5")
  config.model.dtype = "bfloat16"
  tokenizer, t5_config, pretrained = build_text(config)
  assert t5_config.d_model == 32 and set(pretrained) == {"shared", "encoder"}
  models = build_models(config, t5_config)
  assert not models.trainable_text
  devices = jax.devices()[:1]
  mesh = loop.make_mesh(devices)
  state = loop.create_state(models, mesh, config.seed, pretrained)
  batch = jax.device_put(_batch(config, tokenizer),
                         jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  new_state, metrics = loop.jit_train_step(models, mesh)(state, batch)
  metrics = jax.device_get(metrics)
  assert metrics["finite"] == 1.0 and np.isfinite(metrics["d_loss"])
  same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), pretrained,
                      jax.device_get(new_state.text_params))
  assert all(jax.tree.leaves(same))


def test_in_training_eval_on_other_data_is_a_config_error(tmp_path):
  config = tiny_config(tmp_path)
  config.data.name, config.eval.every = "captioned_folder", 500
  with pytest.raises(ValueError, match=r"config\.eval\.every=500: .* needs "
                                       r"data\.name='captioned_shapes', not 'captioned_folder'"):
    validate(config, jax.device_count())


def test_text_keys_of_an_encoder_the_run_lacks_are_named_as_ignored(tmp_path, caplog):
  """With config.text.checkpoint, the from-scratch sizes; with mode='frozen', train.lr_text:
  ignored without a word (tiny_config sets the sizes, as configs/shapes_quick.py does)."""
  from llmimg_jax.train.config import warn_of_unused_text_keys
  config = tiny_config(tmp_path)
  with caplog.at_level(logging.WARNING):
    warn_of_unused_text_keys(config)
  assert "ignored" not in caplog.text
  config.text.mode, config.text.checkpoint = "frozen", str(tmp_path / "t5")
  config.train.lr_text = 1e-3
  with caplog.at_level(logging.WARNING):
    warn_of_unused_text_keys(config)
  assert ("config.text.d_model, config.text.d_ff, config.text.num_layers, config.text.num_heads "
          "only apply to a T5 from scratch, ignored: config.text.checkpoint="
          f"'{tmp_path / 't5'}' brings its own config." in caplog.messages)
  assert ("config.train.lr_text=0.001 only applies to a trainable text encoder, ignored: "
          "config.text.mode='frozen' trains none." in caplog.messages)


def test_text_encoder_from_an_encoder_only_checkpoint(tmp_path):
  """A T5EncoderModel checkpoint (how text-to-image models ship their T5) has all the GAN uses."""
  config = tiny_config(tmp_path)
  config.text.mode = "frozen"
  config.text.checkpoint = tiny_pretrained_t5(tmp_path / "t5", encoder_only=True)
  _, t5_config, pretrained = build_text(config)
  assert t5_config.d_model == 32 and set(pretrained) == {"shared", "encoder"}
  from safetensors.numpy import load_file
  saved = load_file(tmp_path / "t5" / "model.safetensors")
  np.testing.assert_array_equal(pretrained["shared"]["embedding"], saved["shared.weight"])
  q = pretrained["encoder"]["block_0"]["layer_0"]["SelfAttention"]["q"]["kernel"]
  np.testing.assert_array_equal(q, saved["encoder.block.0.layer.0.SelfAttention.q.weight"].T)


def test_a_tokenizer_past_the_checkpoints_embedding_is_refused(tmp_path):
  """ByT5's 384 ids into a 300-row embedding: out-of-range ids would embed as NaN (jnp.take's
  fill) and end the run as diverged; build_text names the mismatch instead."""
  config = tiny_config(tmp_path)
  config.text.checkpoint = tiny_pretrained_t5(tmp_path / "t5", vocab_size=300)
  with pytest.raises(ValueError, match=r"Tokenizer in .*t5 has 384 tokens but the model's "
                                       r"vocab_size is 300"):
    build_text(config)


def test_frozen_without_checkpoint_is_a_clear_error(tmp_path):
  config = tiny_config(tmp_path)
  config.text.mode = "frozen"
  with pytest.raises(ValueError, match="config.text.checkpoint"):
    build_text(config)


def test_missing_text_checkpoint_directory_is_named(tmp_path):
  config = tiny_config(tmp_path)
  config.text.checkpoint = str(tmp_path / "no_such_t5")
  with pytest.raises(FileNotFoundError, match="T5 checkpoint directory not found: .*no_such_t5"):
    build_text(config)


def test_lazy_gradient_penalty_every_other_step(tmp_path):
  """gp_every=2: the penalty (scaled by 2) enters on even steps only. Its metric was 2 x it on
  even steps and 0 on odd ones, so the logged mean over a window of log_every steps wobbled with
  the number of even steps in it (4/3 x the penalty over steps 0-2, 2/3 x over steps 1-3); it is
  the penalty on even steps, unmeasured on odd ones, and the logged mean is over the even steps.
  Under jax_debug_nans: the odd steps' metric was NaN, and JAX stopped the run on it (as on
  d_mismatch at a step without a mismatched pair)."""
  config = tiny_config(tmp_path)
  config.loss.gp_every = 2
  # Only the penalty's schedule is under test: a smaller program (compiles in half the time).
  config.loss.contrastive_weight, config.loss.diffaugment = 0.0, ""
  config.model.attn_resolutions = ()
  mesh = loop.make_mesh(jax.devices()[:1])
  tokenizer, t5_config, _ = build_text(config)
  models = build_models(config, t5_config)
  state = loop.create_state(models, mesh, config.seed)
  step = loop.jit_train_step(models, mesh)
  steps = []
  with jax.debug_nans(True):
    for i in range(4):
      batch = _batch(config, tokenizer, seed=i)
      if i == 3:  # one caption for every image: no mismatched pair, d_mismatch unmeasured
        batch.update({k: np.repeat(v[:1], len(v), axis=0) for k, v in batch.items()
                      if k != "image"})
      state, metrics = step(state, batch)
      steps.append(jax.device_get(metrics))
  penalties = [float(m["gp"]) for m in steps]
  assert [m["gp_measured"] for m in steps] == [1.0, 0.0, 1.0, 0.0]
  assert [m["d_mismatch_measured"] for m in steps] == [1.0, 1.0, 1.0, 0.0]
  assert penalties[0] > 0 and penalties[2] > 0
  # D's loss: the hinge, plus 2 x the penalty on even steps (no contrastive term here)
  np.testing.assert_allclose([float(m["d_loss"]) for m in steps],
                             [float(m["d_hinge"]) + 2 * p for m, p in zip(steps, penalties)],
                             rtol=1e-6)
  np.testing.assert_allclose(_log_window(steps[:3])["gp"], np.mean(penalties[::2]), rtol=1e-6)
  np.testing.assert_allclose(_log_window(steps[1:])["gp"], penalties[2], rtol=1e-6)
