"""Defaults shared by every experiment config, and validation that runs before anything compiles."""
from __future__ import annotations

import difflib
import logging
import math

import jax.numpy as jnp
import ml_collections

from llmimg_jax import cli
from llmimg_jax.data.pipeline import default_data_config, validate_data_config
from llmimg_jax.gan import GRADIENT_PENALTIES, SUPPORTED_RESOLUTIONS, Generator
from llmimg_jax.gan.diffaugment import parse_policy
from llmimg_jax.text.config import COMPUTE_DTYPES, T5Config

log = logging.getLogger(__name__)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = default_data_config()

  c.text = ml_collections.ConfigDict()
  c.text.mode = "trainable"  # 'trainable' (learns through D's losses) or 'frozen'
  c.text.checkpoint = ""  # a T5 directory or hub name; "" = byte tokenizer + T5 from scratch
  c.text.max_length = 64  # tokens (bytes for the byte tokenizer)
  c.text.d_model = 128  # the from-scratch encoder's size
  c.text.d_ff = 256
  c.text.num_layers = 2
  c.text.num_heads = 4
  c.text.feed_forward_proj = "gated-gelu"

  c.model = ml_collections.ConfigDict()
  c.model.resolution = 32  # data.image_size's default
  c.model.nf_g = 32
  c.model.nf_d = 32
  c.model.z_dim = 100
  c.model.cond_dim = 256
  c.model.attn_resolutions = (16,)
  c.model.dtype = "float32"  # compute dtype; params stay fp32. 'bfloat16' on TPU/GPU.

  c.loss = ml_collections.ConfigDict()
  c.loss.gp = "ma_gp"  # 'ma_gp' (DF-GAN's matching-aware GP), 'r1' or 'none'
  c.loss.magp_k = 2.0
  c.loss.magp_p = 6.0
  c.loss.r1_gamma = 10.0
  # Lazy regularisation: the penalty every N steps, scaled by N (train/gp: the penalty itself,
  # averaged over the steps that computed it).
  c.loss.gp_every = 1
  c.loss.diffaugment = "color,translation,cutout"  # '' disables DiffAugment
  c.loss.contrastive_weight = 0.0  # InfoNCE between D image features and sentences; 0 = off
  c.loss.contrastive_temperature = 0.1
  c.loss.contrastive_g = True  # also ask G's images to match their sentence contrastively

  c.train = ml_collections.ConfigDict()
  c.train.steps = 100_000
  c.train.batch_size = 32  # global, over all devices of all hosts
  c.train.lr_g = 1e-4
  c.train.lr_d = 4e-4
  c.train.lr_text = 4e-4
  c.train.b1 = 0.0
  c.train.b2 = 0.9
  c.train.grad_clip = 0.0  # global-norm clip; 0 = off
  c.train.ema_decay = 0.999
  c.train.log_every = 50
  c.train.sample_every = 1000
  c.train.ckpt_every = 1000
  # The latest N (None: all); the best eval step's is kept too. Typed: a config file's None
  # stays an int field, which a --config.train.keep_checkpoints=N override can set.
  c.train.keep_checkpoints = ml_collections.FieldReference(3, field_type=int)
  c.train.max_bad_steps = 20  # consecutive non-finite updates before the run stops
  c.train.sample_prompts = (
      "a red circle", "a large blue square in the center", "a small green triangle",
      "a yellow star in the top left corner", "a purple hexagon on the right",
      "an orange diamond at the bottom", "a cyan star left of a red square",
      "a big white cross in the middle")
  c.train.samples_per_prompt = 4

  c.eval = ml_collections.ConfigDict()  # in-training evaluation, captioned_shapes only
  c.eval.every = 0  # caption accuracy + in-domain FID every N steps to TensorBoard; 0 = off
  c.eval.num_samples = 256  # test captions (fixed subset, fixed noise)
  return c


def unknown_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict,
                 prefix: str = "config") -> list[str]:
  """Errors for keys of `config` that `reference` (validate: base_config()) does not have."""
  errors = []
  for key, value in config.items():
    name = f"{prefix}.{key}"
    if key not in reference:
      close = difflib.get_close_matches(key, list(reference.keys()), n=1)
      hint = f"did you mean {prefix}.{close[0]}?" if close else f"known: {sorted(reference)}"
      errors.append(f"{name} is not a config key ({hint})")
    elif isinstance(value, ml_collections.ConfigDict) and isinstance(
        reference[key], ml_collections.ConfigDict):
      errors += unknown_keys(value, reference[key], name)
  return errors


def missing_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict,
                 prefix: str = "config") -> list[str]:
  """The keys of `reference` (validate: base_config()) that `config` lacks, a section whose
  keys it all lacks by its name alone."""
  missing = []
  for key, value in reference.items():
    name = f"{prefix}.{key}"
    if key not in config:
      missing.append(name)
    elif isinstance(value, ml_collections.ConfigDict) and isinstance(
        config[key], ml_collections.ConfigDict):
      missing += missing_keys(config[key], value, name)
  return missing


def due(step: int, every: int, steps: int) -> bool:
  """Whether step `step` (1-based, after its update) logs / saves / samples / evaluates, for a
  cadence `every` in a run of `steps` steps: every `every` steps, and always at the last."""
  return step % every == 0 or step == steps


def model_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  """config.model.dtype, the models' compute dtype, or a ValueError naming the ones that work
  (validate() checks it before compiling; a sampler's build_models reads a run's saved config)."""
  name = config.model.dtype
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"config.model.dtype={name!r} is not supported; use one of {COMPUTE_DTYPES}.")
  return jnp.dtype(name)


def check_frozen_text(text: ml_collections.ConfigDict) -> None:
  if text.mode == "frozen" and not text.checkpoint:
    raise ValueError(
        "config.text.mode='frozen' needs a pretrained T5 in config.text.checkpoint (a directory "
        "with config.json + model.safetensors, or a hub name); set it, or use mode='trainable'.")


def warn_of_unused_text_keys(config: ml_collections.ConfigDict) -> None:
  """Text keys set for an encoder the run does not have, ignored (they were without a word). A
  warning: configs/shapes_quick.py --config.text.checkpoint=... sets them, which no flag unsets."""
  base, text = base_config(), config.text
  scratch = ("d_model", "d_ff", "num_layers", "num_heads", "feed_forward_proj")
  sizes = [f"config.text.{k}" for k in scratch if text[k] != base.text[k]]
  if text.checkpoint and sizes:
    log.warning("%s to a T5 from scratch, ignored: config.text.checkpoint=%r brings its own "
                "config.", cli.only_apply(sizes), text.checkpoint)
  if text.mode == "frozen" and config.train.lr_text != base.train.lr_text:
    log.warning("config.train.lr_text=%s only applies to a trainable text encoder, ignored: "
                "config.text.mode='frozen' trains none.", config.train.lr_text)


# Fields that may be None: all checkpoints kept; no pretrained T5, folder, builder config, or
# data_dir (the default one).
_NONE_ALLOWED = ("train.keep_checkpoints", "text.checkpoint", "data.folder", "data.config",
                 "data.data_dir")
_KINDS = ((bool, "True or False"), ((int, float), "a number"), (str, "a str"), (tuple, "a tuple"))


def _none_values(config: ml_collections.ConfigDict, default: ml_collections.ConfigDict,
                 prefix: str = "") -> list[str]:
  """'config.KEY=None ...' for every number, bool, str or tuple of `default` set to None in
  `config` (a ConfigDict field accepts None whatever its type; the checks below would fail on it
  with a TypeError or AttributeError, or read a bool's None as False)."""
  errors = []
  for key, value in default.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict) and key in config:
      errors += _none_values(config[key], value, f"{name}.")
    elif config.get(key, value) is None and name not in _NONE_ALLOWED:
      kind = next((k for t, k in _KINDS if isinstance(value, t)), None)
      if kind is not None:
        errors.append(f"config.{name}=None: give {kind} (the default is {value!r})")
  return errors


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ValueError naming the key and the fix; cheap, runs before any compilation."""
  default = base_config()
  start = "start get_config() from llmimg_jax.train.config.base_config(), which has every key"
  if not isinstance(config, ml_collections.ConfigDict):  # e.g. a dict
    raise ValueError(f"the config is a {type(config).__name__}, not an ml_collections "
                     f"ConfigDict: {start}, and set what differs.")
  if missing := missing_keys(config, default):
    raise ValueError(f"the config lacks {', '.join(missing)}: {start} (the defaults are "
                     "there), and set what differs.")
  if errors := unknown_keys(config, default):
    raise ValueError("; ".join(errors) + ". Fix the spelling or remove the key (the keys and "
                     "their defaults are in llmimg_jax/train/config.py, base_config).")
  if errors := _none_values(config, default):
    raise ValueError("; ".join(errors) + ".")
  m, t = config.model, config.train
  if m.resolution not in SUPPORTED_RESOLUTIONS:
    raise ValueError(f"config.model.resolution={m.resolution} is not supported; use one of "
                     f"{SUPPORTED_RESOLUTIONS}.")
  blocks = Generator(m.resolution).block_resolutions()  # [8, 16, ..., resolution]
  if bad := [r for r in m.attn_resolutions if r not in blocks]:
    raise ValueError(f"config.model.attn_resolutions={tuple(m.attn_resolutions)} contains {bad}; "
                     f"at resolution {m.resolution} use a subset of {blocks}.")
  if t.batch_size < 2:  # the roll over the global batch would pair each sentence with itself
    raise ValueError(f"config.train.batch_size={t.batch_size} must be >= 2: D's mismatched pairs "
                     "and the contrastive term pair each image with another example's sentence.")
  if t.batch_size % num_devices:
    raise ValueError(
        f"config.train.batch_size={t.batch_size} is not divisible by the {num_devices} devices "
        f"of this run; use a multiple of {num_devices}, e.g. --config.train.batch_size="
        f"{max(1, round(t.batch_size / num_devices)) * num_devices}, or run on a device count "
        f"that divides {t.batch_size} (a run resuming its checkpoints keeps its batch size).")
  if config.text.mode not in ("trainable", "frozen"):
    raise ValueError(f"config.text.mode={config.text.mode!r}: use 'trainable' or 'frozen'.")
  check_frozen_text(config.text)
  if config.text.max_length < 2:
    raise ValueError(f"config.text.max_length={config.text.max_length} must be >= 2 (room for "
                     "one token and EOS).")
  try:
    parse_policy(config.loss.diffaugment)
  except ValueError as e:
    raise ValueError(f"config.loss.diffaugment: {e}") from None
  if config.loss.gp not in GRADIENT_PENALTIES:
    raise ValueError(f"config.loss.gp={config.loss.gp!r}: use one of {GRADIENT_PENALTIES}.")
  model_dtype(config)
  if config.data.image_size != m.resolution:
    raise ValueError(
        f"config.data.image_size={config.data.image_size} differs from config.model.resolution="
        f"{m.resolution}; set both to the same value.")
  for name in ("steps", "log_every", "sample_every", "ckpt_every", "max_bad_steps",
               "samples_per_prompt"):  # batch_size: >= 2, above
    if t[name] <= 0:
      raise ValueError(f"config.train.{name}={t[name]} must be positive.")
  if t.keep_checkpoints is not None and t.keep_checkpoints <= 0:  # Orbax's max_to_keep=0 keeps none
    raise ValueError(f"config.train.keep_checkpoints={t.keep_checkpoints} must be positive: it is "
                     "how many of the latest checkpoints stay on disk (0 would keep none; to keep "
                     "all, set it to None in a config file).")
  if not t.sample_prompts:
    raise ValueError("config.train.sample_prompts is empty; give at least one prompt for the "
                     "sample grids.")
  if isinstance(t.sample_prompts, str) or not all(
      isinstance(p, str) and p.strip() for p in t.sample_prompts):
    raise ValueError(f"config.train.sample_prompts={t.sample_prompts!r}: give a tuple of "
                     "non-blank prompts, e.g. ('a red circle', 'a blue square').")
  if config.eval.every < 0:
    raise ValueError(f"config.eval.every={config.eval.every} must be >= 0 (0 = off).")
  if config.eval.num_samples < 2:
    raise ValueError(f"config.eval.num_samples={config.eval.num_samples} must be >= 2.")
  if config.eval.every and config.data.name != "captioned_shapes":
    raise ValueError(f"config.eval.every={config.eval.every}: the in-training evaluation "
                     "(caption accuracy, in-domain FID) needs data.name='captioned_shapes', not "
                     f"{config.data.name!r}; set it to 0 and measure the standard FID with "
                     "evaluate.py --inception_weights.")
  check_ranges(config)
  if not config.text.checkpoint:
    text_encoder_config(config.text)
  if config.loss.gp_every < 1:
    raise ValueError(f"config.loss.gp_every={config.loss.gp_every} must be >= 1.")
  data_dir = config.data.data_dir  # "" would read ~/tensorflow_datasets, ignoring $TFDS_DATA_DIR
  if data_dir is not None and not str(data_dir).strip():
    raise ValueError(cli.blank_flag(
        "--config.data.data_dir", "DIR", "name the TFDS data directory, or drop the override for "
        "$LLMIMG_DATA_DIR, $TFDS_DATA_DIR or ~/tensorflow_datasets", name="config.data.data_dir"))
  crop = config.data.random_crop
  # 1 would crop the whole image, i.e. nothing; it is also what `random_crop = True` becomes.
  # (Checked for training only: runs saved with 1.0 are still evaluated, without crops.)
  if not (crop == 0 or 0.0 < float(crop) < 1.0):
    raise ValueError(f"config.data.random_crop={crop!r}: give the smallest crop side as a "
                     "fraction in (0, 1), e.g. 0.8 (random crops of 80-100% of the image side), "
                     "or 0 for centre crops.")
  if crop and config.data.name == "captioned_shapes":
    raise ValueError(f"config.data.random_crop={crop!r} with data.name='captioned_shapes': its "
                     "captions state each object's size and place in the image, which a random "
                     "crop changes (or cuts the object off); set data.random_crop=0 "
                     "(data.random_flip keeps them true: it swaps left and right in the caption).")
  if config.data.name != "captioned_folder" and (
      set_keys := [k for k in ("folder", "store_size", "max_pixels") if config.data[k]]):
    raise ValueError(
        f"config.data.{set_keys[0]}={config.data[set_keys[0]]!r} is read by captioned_folder "
        f"only, but config.data.name={config.data.name!r}: set data.name='captioned_folder' "
        f"(configs/folder_64.py) to train on a folder, or drop data.{', data.'.join(set_keys)}.")
  validate_data_config(config.data)


def check_ranges(config: ml_collections.ConfigDict) -> None:
  """Values outside these ranges train without an error but wrongly: a negative clip or learning
  rate ascends, b1/b2/ema_decay = 1 divide by zero or freeze, temperature 0 is NaN every step;
  model widths < 1 fail only in the init, after the dataset is built."""
  t, loss = config.train, config.loss
  checks = [(f"train.{k}", t[k], t[k] >= 0, ">= 0") for k in ("lr_g", "lr_d", "lr_text")]
  checks += [("train.grad_clip", t.grad_clip, t.grad_clip >= 0, ">= 0 (0 = off)")]
  checks += [(f"train.{k}", t[k], 0 <= t[k] < 1, "in [0, 1)") for k in ("b1", "b2", "ema_decay")]
  checks += [("loss.contrastive_temperature", loss.contrastive_temperature,
              loss.contrastive_temperature > 0, "> 0")]
  checks += [(f"loss.{k}", loss[k], loss[k] >= 0, ">= 0")
             for k in ("contrastive_weight", "magp_k", "r1_gamma")]
  checks += [("loss.magp_p", loss.magp_p, loss.magp_p >= 2,  # below 2: NaN at a zero gradient
              ">= 2 (DF-GAN: 6)")]
  # inf passes the lower bounds above: an infinite learning rate or loss weight is NaN from step 1
  checks += [(k, v, False, "finite") for k, v, ok, _ in list(checks)
             if ok and isinstance(v, float) and math.isinf(v)]
  checks += [("seed", config.seed, 0 <= config.seed < 2**32, "in [0, 2**32)")]
  checks += [(f"model.{k}", config.model[k], config.model[k] >= 1, ">= 1")  # else init fails
             for k in ("nf_g", "nf_d", "z_dim", "cond_dim")]
  # grain refuses the loader's negatives with a traceback, after the model is built; a negative
  # build_num_proc would build captioned_shapes in one process
  data_zero = {"max_pixels": "the default", "store_size": "the default", "num_workers": "in this "
               "process", "worker_buffer_size": "1", "read_threads": "grain's default",
               "read_buffer_size": "two per read thread", "build_num_proc": "automatic"}
  checks += [(f"data.{k}", config.data[k], config.data[k] >= 0, f">= 0 (0 = {zero})")
             for k, zero in data_zero.items()]
  if bad := [f"config.{k}={v} must be {need}" for k, v, ok, need in checks if not ok]:
    raise ValueError("; ".join(bad) + ".")


def text_encoder_config(text: ml_collections.ConfigDict, **vocab: int) -> T5Config:
  """The from-scratch T5 encoder of config.text (config.text.checkpoint brings its own config);
  vocab: its tokenizer's vocab_size, pad_token_id and eos_token_id (T5Config's defaults when only
  checking). A shape it cannot have is a ValueError naming config.text."""
  if text.num_heads < 1 or text.d_model % text.num_heads:
    raise ValueError(f"config.text.d_model={text.d_model} must be a multiple of "
                     f"config.text.num_heads={text.num_heads} (>= 1).")
  try:
    return T5Config(
        d_model=text.d_model, d_kv=text.d_model // text.num_heads, d_ff=text.d_ff,
        num_layers=text.num_layers, num_decoder_layers=0, num_heads=text.num_heads,
        feed_forward_proj=text.feed_forward_proj, dropout_rate=0.0, **vocab)
  except ValueError as e:
    raise ValueError(f"config.text: {e}") from None
