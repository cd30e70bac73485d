"""T5 hyperparameters, read from (and compatible with) Hugging Face `config.json` files."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

log = logging.getLogger(__name__)

# Activation names as Hugging Face spells them -> how modeling.py computes them.
ACTIVATIONS = ("relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish")
# Size of transformers' ByT5Tokenizer: 3 specials + 256 bytes + 125 extra ids.
BYT5_VOCAB_SIZE = 384
COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_dtype(dtype: Any) -> jnp.dtype:
  """`dtype` as a T5 compute dtype, or a ValueError naming the ones that work."""
  try:
    d = jnp.dtype(dtype)
  except TypeError:  # e.g. 'bf16'
    d = None
  if d is None or d.name not in COMPUTE_DTYPES:
    why = (" (T5's activations overflow float16's range: inf, then NaN)" if d == jnp.float16
           else "")
    raise ValueError(f"T5 compute dtype {dtype if d is None else d.name!r} is not supported; use "
                     f"one of {COMPUTE_DTYPES}{why}.")
  return d


def first_token_id(value: Any, name: str, source: str) -> int | None:
  """A token id as Hugging Face files give it: an int, or a list (several EOS ids) whose first
  one generation here stops at; None for none."""
  if isinstance(value, (list, tuple)):
    if len(value) > 1:
      log.warning("%s has several %s %s; generation stops at the first only.", source, name, value)
    value = value[0] if value else None
  return None if value is None else int(value)


@dataclasses.dataclass(frozen=True)
class T5Config:
  """T5 / T5 v1.1 / FLAN-T5 / mT5 / ByT5 hyperparameters. Frozen and hashable (a jit static arg).

  `tie_word_embeddings`: the LM head is the shared embedding (no `lm_head` param).
  `dense_act_fn`, `is_gated_act`: the FFN's activation and gating where config.json's own keys
  (which transformers writes, and applies over `feed_forward_proj`) say otherwise than
  `feed_forward_proj`, e.g. BLIP-2's FLAN-T5 configs: 'gated-gelu' with dense_act_fn 'gelu' (exact
  GELU, not gelu_new). None where they agree (normalised so in __post_init__): `activation` and
  `is_gated` are the FFN.
  `scale_decoder_outputs`: multiply the decoder output by d_model**-0.5 before the LM head;
  defaults to `tie_word_embeddings` (original T5), transformers >= 5 writes it explicitly.
  """
  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 2048
  num_layers: int = 6
  num_decoder_layers: int | None = None  # None: same as num_layers
  num_heads: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "relu"
  tie_word_embeddings: bool = True
  scale_decoder_outputs: bool | None = None  # None: same as tie_word_embeddings
  pad_token_id: int = 0
  eos_token_id: int = 1
  decoder_start_token_id: int = 0
  dense_act_fn: str | None = None  # None: from feed_forward_proj
  is_gated_act: bool | None = None  # None: from feed_forward_proj

  def __post_init__(self):
    if self.num_decoder_layers is None:
      object.__setattr__(self, "num_decoder_layers", self.num_layers)
    if self.scale_decoder_outputs is None:
      object.__setattr__(self, "scale_decoder_outputs", bool(self.tie_word_embeddings))
    for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                 "relative_attention_num_buckets", "relative_attention_max_distance"):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"T5Config.{name} must be a positive int, got {value!r}.")
    if not (self.relative_attention_num_buckets >= 4
            and self.relative_attention_max_distance > self.relative_attention_num_buckets // 2):
      raise ValueError(  # below, T5's log-spaced buckets divide by zero or run backwards
          f"T5Config needs relative_attention_num_buckets >= 4 and relative_attention_max_distance "
          f"> relative_attention_num_buckets // 2; got {self.relative_attention_num_buckets} and "
          f"{self.relative_attention_max_distance} (T5's own: 32 and 128).")
    if self.num_decoder_layers < 0:
      raise ValueError(f"T5Config.num_decoder_layers must be >= 0, got {self.num_decoder_layers}.")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate}.")
    proj_act, proj_gated = self._proj_ffn()  # validates feed_forward_proj
    if self.dense_act_fn == proj_act:
      object.__setattr__(self, "dense_act_fn", None)
    if self.dense_act_fn is not None and self.dense_act_fn not in ACTIVATIONS:
      raise ValueError(f"Unsupported T5 dense_act_fn={self.dense_act_fn!r}: expected one of "
                       f"{ACTIVATIONS}.")
    if self.is_gated_act is not None and not isinstance(self.is_gated_act, bool):
      raise ValueError(f"T5Config.is_gated_act must be a bool, got {self.is_gated_act!r}.")
    if self.is_gated_act == proj_gated:
      object.__setattr__(self, "is_gated_act", None)
    for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
      value = getattr(self, name)
      if not 0 <= value < self.vocab_size:
        raise ValueError(f"T5Config.{name}={value} is outside the vocabulary "
                         f"[0, {self.vocab_size}).")

  @property
  def is_gated(self) -> bool:
    return self._proj_ffn()[1] if self.is_gated_act is None else self.is_gated_act

  @property
  def activation(self) -> str:
    """The FFN activation: 'gated-gelu' means gelu_new (tanh approximation), as in transformers;
    `dense_act_fn` wins where set."""
    return self._proj_ffn()[0] if self.dense_act_fn is None else self.dense_act_fn

  def _proj_ffn(self) -> tuple[str, bool]:
    """(activation, gated) as `feed_forward_proj` names them."""
    parts = self.feed_forward_proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or parts[-1] not in ACTIVATIONS:
      raise ValueError(
          f"Unsupported T5 feed_forward_proj={self.feed_forward_proj!r}: expected '<act>' or "
          f"'gated-<act>' with <act> one of {ACTIVATIONS} (e.g. 'relu' for original T5, "
          "'gated-gelu' for T5 v1.1 / FLAN-T5 / mT5 / ByT5).")
    if self.feed_forward_proj == "gated-gelu":
      return "gelu_new", True
    return parts[-1], parts[0] == "gated" and len(parts) == 2

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> T5Config:
    """From a Hugging Face T5 config dict; unknown keys (architectures, dtype, ...) are ignored."""
    model_type = d.get("model_type", "t5")
    if model_type not in ("t5", "mt5", "umt5"):
      raise ValueError("Expected a T5 config (model_type 't5' or 'mt5'), "
                       f"got model_type={model_type!r}.")
    if model_type == "umt5":
      raise ValueError("umT5 (per-layer relative attention bias) is not supported; "
                       "use a t5/mt5 checkpoint.")
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in fields and v is not None}
    if "eos_token_id" in kw:
      kw["eos_token_id"] = first_token_id(kw["eos_token_id"], "eos_token_id", "config")
    if "decoder_start_token_id" not in kw:
      kw["decoder_start_token_id"] = kw.get("pad_token_id", 0)
    if "scale_decoder_outputs" not in kw:
      # transformers' T5 before 5.x (and its T5Config reading such a file): scale iff tied. Its
      # MT5 scaled iff tied up to 4.x and never in 5.x, whose mT5 configs always say tied.
      tied = bool(kw.get("tie_word_embeddings", True))
      major = str(d.get("transformers_version", "")).split(".")[0]
      saved_before_5 = major.isdigit() and int(major) < 5
      kw["scale_decoder_outputs"] = tied and (model_type == "t5" or saved_before_5)
    for name in ("dropout_rate", "layer_norm_epsilon"):
      if name in kw:
        kw[name] = float(kw[name])
    return cls(**kw)

  @classmethod
  def from_json_file(cls, path: str | os.PathLike) -> T5Config:
    path = os.fspath(path)
    try:
      with open(path, encoding="utf-8") as f:  # JSON's encoding, whatever the locale's
        d = json.load(f)
    except FileNotFoundError as e:
      raise FileNotFoundError(
          f"T5 config file not found: {path}. A checkpoint directory needs a config.json "
          "(save one with model.config.save_pretrained(DIR)).") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # the latter names no file
      raise ValueError(f"Malformed JSON in T5 config {path}: {e}. Re-save it with "
                       "config.save_pretrained(DIR).") from e
    if not isinstance(d, dict):
      raise ValueError(f"T5 config {path} must hold a JSON object, got {type(d).__name__}.")
    try:
      return cls.from_dict(d)
    except (TypeError, ValueError) as e:
      raise ValueError(f"Invalid T5 config {path}: {e}") from e

  def to_dict(self) -> dict[str, Any]:
    """A Hugging Face compatible config dict (loadable by transformers.T5Config)."""
    d = dataclasses.asdict(self)
    # transformers reads the FFN from these two where given (as it writes them): never None.
    d.update(dense_act_fn=self.activation, is_gated_act=self.is_gated)
    d.update(model_type="t5", is_encoder_decoder=True, architectures=["T5ForConditionalGeneration"])
    return d

  @classmethod
  def byt5_small_scratch(cls, d_model: int = 256, num_layers: int = 4, num_heads: int = 4,
                         d_kv: int = 64, d_ff: int | None = None,
                         dropout_rate: float = 0.1) -> T5Config:
    """The offline default: a small untied gated-GELU T5 for the ByT5 byte tokenizer (vocab 384)."""
    return cls(vocab_size=BYT5_VOCAB_SIZE, d_model=d_model, d_kv=d_kv, d_ff=d_ff or 4 * d_model,
               num_layers=num_layers, num_heads=num_heads, dropout_rate=dropout_rate,
               feed_forward_proj="gated-gelu", tie_word_embeddings=False,
               pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
