"""The training state (one pytree) and the models it is built from."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from llmimg_jax.gan import Discriminator, Generator
from llmimg_jax.text import T5Config, T5EncoderModel, load_pretrained
from llmimg_jax.text.tokenizer import TextTokenizer, load_tokenizer
from llmimg_jax.train.config import check_frozen_text, model_dtype, text_encoder_config

log = logging.getLogger(__name__)
PyTree = Any
# WORKDIR/TEXT_DIR: a pretrained text.checkpoint's tokenizer files and T5 config.json, written when
# training starts, so sampling needs neither that directory nor the hub (the checkpoints hold the
# encoder's weights).
TEXT_DIR = "text"


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array  # int32 scalar: number of updates applied
  rng: jax.Array  # base key; step keys are fold_in(rng, step)
  g_params: PyTree
  d_params: PyTree
  ema_params: PyTree  # EMA of g_params: used for samples and evaluation
  text_params: PyTree
  g_opt_state: PyTree
  d_opt_state: PyTree
  text_opt_state: PyTree  # () when the text encoder is frozen
  bad_steps: jax.Array  # int32 scalar: consecutive updates skipped for non-finite values


@dataclasses.dataclass(frozen=True)
class Models:
  """Everything static the step needs: modules, optimizers, and the config."""
  generator: Generator
  discriminator: Discriminator
  text_encoder: T5EncoderModel
  g_tx: optax.GradientTransformation
  d_tx: optax.GradientTransformation
  text_tx: optax.GradientTransformation | None  # None: frozen text encoder
  config: ml_collections.FrozenConfigDict

  def __hash__(self):
    return id(self)

  @property
  def trainable_text(self) -> bool:
    return self.text_tx is not None


def _adam(lr: float, cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  adam = optax.adam(lr, b1=cfg.train.b1, b2=cfg.train.b2)
  if not cfg.train.grad_clip:
    return adam
  clip = optax.clip_by_global_norm(cfg.train.grad_clip)  # stateless

  def update(grads, state, params=None):
    clipped, _ = clip.update(grads, optax.EmptyState())
    return adam.update(clipped, state, params)

  # Adam's own state, as without clipping (optax.chain would nest it in a tuple): a run resumes
  # from its checkpoints with clipping turned on, as the divergence error advises.
  return optax.GradientTransformation(adam.init, update)


def build_text(cfg: ml_collections.ConfigDict) -> tuple[TextTokenizer, T5Config, PyTree | None]:
  """The tokenizer, T5 config and (for a checkpoint) pretrained encoder params."""
  t = cfg.text
  check_frozen_text(t)
  if t.checkpoint:
    # A T5EncoderModel's checkpoint will do; a tokenizer with ids past the embedding is refused.
    t5_config, params, tokenizer = load_pretrained(t.checkpoint, t.max_length, encoder_only=True)
    return tokenizer, t5_config, params
  tokenizer = load_tokenizer(None, t.max_length)
  t5_config = text_encoder_config(t, vocab_size=tokenizer.vocab_size,
                                  pad_token_id=tokenizer.pad_id, eos_token_id=tokenizer.eos_id)
  return tokenizer, t5_config, None


def _new_dir(parent: Path, prefix: str) -> Path:
  """A new, empty directory in `parent` named `prefix` + a random suffix, with the mode a plain
  mkdir gives (tempfile.mkdtemp's is 0700 whatever the umask, and the folder renamed into place
  kept it: others could not sample the run)."""
  while True:
    path = parent / f"{prefix}{secrets.token_hex(8)}"
    try:
      path.mkdir()
      return path
    except FileExistsError:
      continue


def save_text_files(workdir: str | os.PathLike, tokenizer: TextTokenizer, t5_config: T5Config,
                    *, replace: bool = False) -> Path:
  """Writes WORKDIR/TEXT_DIR (a temporary directory renamed into place) if it is missing, or
  with `replace` (a run starting from step 0, maybe on another T5) anew; returns it."""
  target = Path(workdir) / TEXT_DIR
  if target.exists() and not replace:
    return target
  tmp = _new_dir(Path(workdir), f".{TEXT_DIR}-")
  try:
    tokenizer.hf.save_pretrained(tmp)
    (tmp / "config.json").write_text(json.dumps(t5_config.to_dict(), indent=2))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; left only by a failure
  return target


def load_text_files(text_dir: str | os.PathLike, max_length: int
                    ) -> tuple[TextTokenizer, T5Config]:
  """The tokenizer and T5 config that save_text_files wrote (or a checkpoint directory's)."""
  return (load_tokenizer(str(text_dir), max_length),
          T5Config.from_json_file(os.path.join(text_dir, "config.json")))


def build_models(cfg: ml_collections.ConfigDict, t5_config: T5Config) -> Models:
  dtype = model_dtype(cfg)
  m = cfg.model
  generator = Generator(resolution=m.resolution, nf=m.nf_g, z_dim=m.z_dim, cond_dim=m.cond_dim,
                        attn_resolutions=tuple(m.attn_resolutions), dtype=dtype)
  discriminator = Discriminator(resolution=m.resolution, nf=m.nf_d, cond_dim=m.cond_dim,
                                contrastive=cfg.loss.contrastive_weight > 0, dtype=dtype)
  text_encoder = T5EncoderModel(t5_config, dtype=dtype)
  text_tx = _adam(cfg.train.lr_text, cfg) if cfg.text.mode == "trainable" else None
  return Models(generator, discriminator, text_encoder, _adam(cfg.train.lr_g, cfg),
                _adam(cfg.train.lr_d, cfg), text_tx, ml_collections.FrozenConfigDict(cfg))


def init_state(models: Models, rng: jax.Array, text_params: PyTree | None) -> TrainState:
  """A fresh state; jit it with replicated out_shardings to create it on the mesh."""
  cfg = models.config
  # Parameters are initialised from an RBG key: on CPU its init compiles ~3x faster than
  # threefry's. Training randomness stays `rng`'s PRNG (jax_default_prng_impl's; JAX's default,
  # threefry, draws the same for any sharding).
  k_run, k_init = jax.random.split(rng)
  k_g, k_d, k_t = jax.random.split(
      jax.random.key(jax.random.randint(k_init, (), 0, 2**31 - 1, jnp.int32), impl="rbg"), 3)
  res, length = cfg.model.resolution, cfg.text.max_length
  ids = jnp.ones((1, length), jnp.int32)  # [batch, length]
  mask = jnp.ones((1, length), jnp.int32)  # [batch, length]
  if text_params is None:
    text_params = models.text_encoder.init(k_t, ids, mask)["params"]
  d_text = models.text_encoder.config.d_model
  # G and D only need the shapes of the text features
  words = jnp.zeros((1, length, d_text), jnp.float32)
  sent = jnp.zeros((1, d_text), jnp.float32)
  z = jnp.zeros((1, cfg.model.z_dim), jnp.float32)
  g_params = models.generator.init(k_g, z, sent, words, mask)["params"]
  images = jnp.zeros((1, res, res, 3), jnp.float32)
  d_params = models.discriminator.init(k_d, images, sent)["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32), rng=k_run, g_params=g_params, d_params=d_params,
      ema_params=jax.tree.map(jnp.copy, g_params), text_params=text_params,
      g_opt_state=models.g_tx.init(g_params), d_opt_state=models.d_tx.init(d_params),
      text_opt_state=models.text_tx.init(text_params) if models.trainable_text else (),
      bad_steps=jnp.zeros((), jnp.int32))
