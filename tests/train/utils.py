"""Helpers shared by the training tests: a tiny config and pretrained T5, a random batch, a
host-drawn mid-training state, tree equality, TensorBoard scalars as logged (and as the loop logs
given steps' metrics), damaged checkpoints, and a fresh checkpoint manager and input iterator to
restore them into."""
from __future__ import annotations

import contextlib
import functools
import shutil
import struct
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax
import pytest
from tqdm import tqdm

from llmimg_jax.data.pipeline import make_iterator
from llmimg_jax.train import checkpoint
from llmimg_jax.train.config import base_config
from llmimg_jax.train.state import TrainState, init_state

STEP = 4  # the step of _host_state's state


def tiny_config(data_dir) -> ml_collections.ConfigDict:
  """A config small enough to compile and step in seconds on a CPU."""
  c = base_config()
  c.data.name = "captioned_shapes"
  c.data.config = "tiny_32"
  c.data.data_dir = str(data_dir)
  c.data.image_size = 32
  c.data.num_workers = 0
  c.text.max_length = 32
  c.text.d_model = 32
  c.text.d_ff = 64
  c.text.num_layers = 1
  c.text.num_heads = 2
  c.model.resolution = 32
  c.model.nf_g = 8
  c.model.nf_d = 8
  c.model.z_dim = 16
  c.model.cond_dim = 32
  c.loss.contrastive_weight = 0.1
  c.train.steps = 4
  c.train.batch_size = 8
  c.train.log_every = 2
  c.train.sample_every = 4
  c.train.ckpt_every = 2
  c.train.sample_prompts = ("a red circle", "a blue square")
  c.train.samples_per_prompt = 2
  return c


@contextlib.contextmanager
def lowered_programs():
  """The names of the programs lowered inside the block, in order (jax.monitoring): each a jit
  cache miss, which compiles (or loads from the persistent compilation cache)."""
  names = []

  def on_event(event: str, duration: float, **kwargs):
    del duration
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
      names.append(kwargs["fun_name"])

  jax.monitoring.register_event_duration_secs_listener(on_event)
  try:
    yield names
  finally:
    jax.monitoring.unregister_event_duration_listener(on_event)


def tiny_pretrained_t5(path, encoder_only: bool = False, vocab_size: int = 384) -> str:
  """A tiny random T5 (+ ByT5 tokenizer) saved by transformers, as a 'pretrained' checkpoint
  (encoder_only: by T5EncoderModel, without decoder weights)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  hf_config = transformers.T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64,
                                    num_layers=1, num_decoder_layers=1, num_heads=4, pad_token_id=0,
                                    eos_token_id=1, decoder_start_token_id=0)
  model_class = (transformers.T5EncoderModel if encoder_only
                 else transformers.T5ForConditionalGeneration)
  model_class(hf_config).save_pretrained(path)
  transformers.ByT5Tokenizer().save_pretrained(path)
  return str(path)


def _batch(config, tokenizer, seed=0):
  rng = np.random.default_rng(seed)
  b, r = config.train.batch_size, config.model.resolution
  captions = [f"a {c} circle" for c in rng.choice(["red", "blue", "green", "yellow"], b)]
  return {"image": rng.integers(0, 256, (b, r, r, 3), dtype=np.uint8), **tokenizer(captions)}


def _host_state(models) -> TrainState:
  """A state as if mid-training, drawn on the host (compiling init_state takes ~20 s): kernels
  fan-in scaled, scales and gains near 1 (D's block gains start at 0, where the gradients of
  their branches vanish), small biases; an EMA apart from G; Adam states with history (nu > 0:
  the next update is smooth in the gradient, where a first Adam step is lr * sign(g))."""
  abstract = jax.eval_shape(functools.partial(init_state, models), jax.random.PRNGKey(0), None)
  rng = np.random.default_rng(0)

  def param(path, x):
    name, noise = jax.tree_util.keystr(path), rng.standard_normal(x.shape)
    if x.ndim >= 2:  # kernels, embeddings
      return (noise / np.sqrt(np.prod(x.shape[:-1]))).astype(x.dtype)
    if "scale" in name or "weight" in name or "gain" in name:
      return (1.0 + 0.1 * noise).astype(x.dtype)
    if "fc2" in name:  # G's affine [gamma, beta] bias: gamma near 1
      return (0.1 * noise + (np.arange(x.shape[0]) < x.shape[0] // 2)).astype(x.dtype)
    return (0.1 * noise).astype(x.dtype)  # biases

  params = {k: jax.tree_util.tree_map_with_path(param, getattr(abstract, k))
            for k in ("g_params", "d_params", "text_params", "ema_params")}
  opt_states = {f"{k}_opt_state": optax.tree.set(
      getattr(abstract, f"{k}_opt_state"), count=np.int32(3),
      mu=jax.tree.map(lambda p: 1e-3 * rng.standard_normal(p.shape, np.float32),
                      params[f"{k}_params"]),
      nu=jax.tree.map(lambda p: rng.uniform(1e-5, 1e-4, p.shape).astype(np.float32),
                      params[f"{k}_params"]))
      for k in ("g", "d", "text")}
  return TrainState(step=np.int32(STEP), rng=np.asarray(jax.random.PRNGKey(3)),
                    bad_steps=np.int32(0), **params, **opt_states)


def _equal(a, b) -> bool:
  return all(jax.tree.leaves(jax.tree.map(
      lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)))


def _scalar_events(logdir: Path, tag: str) -> list[tuple[int, float]]:
  """(step, value) of a scalar as TensorBoard shows it: event files in order (TFRecord framing:
  length, its CRC, an Event proto, its CRC), where a SessionLog.START at step S drops the events
  of step >= S read before it (a run resumed at S - 1)."""
  from tensorboardX.proto import event_pb2
  events = []
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    data, i = path.read_bytes(), 0
    while i < len(data):
      (size,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + size])
      if event.session_log.status == event_pb2.SessionLog.START:
        events = [(step, value) for step, value in events if step < event.step]
      events += [(event.step, value.simple_value) for value in event.summary.value
                 if value.tag == tag]
      i += 12 + size + 4
  return events


def _scalars(logdir: Path, tag: str) -> dict[int, float]:
  return dict(_scalar_events(logdir, tag))


def _damage(step_dir, how: str) -> None:
  files = sorted(p for p in (step_dir / "state").rglob("*") if p.is_file())
  if how == "truncated":
    for p in files:
      p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
  elif how == "half_deleted":
    for p in files[::2]:
      p.unlink()
  elif how == "array_data_deleted":
    shutil.rmtree(step_dir / "state" / "d")
  elif how == "data_state_deleted":
    for p in (step_dir / "data").iterdir():
      p.unlink()


def _fresh(config, tokenizer, workdir):
  return (checkpoint.make_manager(workdir, config),
          make_iterator(config.data, tokenizer, batch_size_per_host=8, seed=0))


def _log_window(steps: list[dict[str, float]], done: int = 4) -> dict[str, float]:
  """What loop._log_metrics writes to TensorBoard for these steps' metrics (train/ stripped);
  d_loss, g_loss, finite and bad_steps default to those of a finite update."""
  from llmimg_jax.train import loop  # pylint: disable=g-import-not-at-top
  written = {}

  class Writer:
    def add_scalar(self, name, value, step):
      assert step == done
      written[name.removeprefix("train/")] = value
  fetched = [{"bad_steps": np.int32(0), "finite": np.float32(1.0), "d_loss": np.float32(1.0),
              "g_loss": np.float32(1.0), **{k: np.asarray(v) for k, v in m.items()}}
             for m in steps]
  t = ml_collections.ConfigDict({"batch_size": 4, "max_bad_steps": 3})
  loop._log_metrics(fetched, done, loop._StepClock(), tqdm(disable=True), Writer(), t,
                    Path("checkpoints"))
  return written
