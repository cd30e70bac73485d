"""Weights saved by transformers 4.x's Flax T5s (flax_model.msgpack, or its shards and index).

FlaxT5ForConditionalGeneration / FlaxT5Model / FlaxT5EncoderModel.save_pretrained wrote their
param tree with flax.serialization (msgpack); transformers 5 has no Flax models to read it. Here it
is read with flax alone, and its params are named by the PyTorch state dict keys that the
safetensors and pytorch_model.bin readers give (flax_key_to_torch), so
loading.convert_state_dict(..., from_flax=True) checks and converts all formats alike. That keeps
Flax's [in, out] kernels, the model's own layout; read_state_dict transposes them to PyTorch's
[out, in] Linear weights (flax_to_state_dict).

  shared/embedding                         -> shared.weight
  .../SelfAttention/q/kernel (Dense)       -> .../SelfAttention.q.weight (a Linear)
  .../relative_attention_bias/embedding    -> ...relative_attention_bias.weight
  .../layer_norm/weight, final_layer_norm  -> the same, dotted
  lm_head/kernel (untied models only)      -> lm_head.weight
with block/0/layer/1 -> block.0.layer.1, as in transformers' own Flax -> PyTorch conversion.
"""
from __future__ import annotations

import re

import numpy as np
from flax import serialization

from llmimg_jax.text.tokenizer import lfs_pointer_error
from llmimg_jax.text.weight_files import some_names

FLAX, FLAX_INDEX = "flax_model.msgpack", "flax_model.msgpack.index.json"


def read_msgpack(path: str) -> dict[str, np.ndarray]:
  """One msgpack file's arrays as float32, keyed by '/'-joined Flax paths (the names of
  transformers' shard index, flax_model.msgpack.index.json). A tree wrapped in a single top-level
  'params' key, as flax.serialization.to_bytes({"params": params}) writes it, is unwrapped."""
  try:
    with open(path, "rb") as f:
      tree = serialization.msgpack_restore(f.read())
  except Exception as e:  # msgpack's ValueError (cut short), ExtraData (not msgpack), ...
    if lfs := lfs_pointer_error([path]):
      raise ValueError(lfs) from e
    detail = " ".join(str(e).split()).rstrip(".") or type(e).__name__
    raise ValueError(f"Could not read Flax weights {path} ({detail}): is it truncated or not a "
                     "msgpack file? Re-download it, or re-save the checkpoint with transformers "
                     "4.x's save_pretrained(DIR).") from e
  if isinstance(tree, dict) and list(tree) == ["params"] and isinstance(tree["params"], dict):
    tree = tree["params"]  # flax.serialization.to_bytes({"params": params}): model.init's variables
  flat, others = {}, []
  if isinstance(tree, dict):
    _flatten(tree, (), flat, others)
  if others or not flat:
    what = "an empty dict" if isinstance(tree, dict) else f"a {type(tree).__name__}"
    found = f"{some_names(others)} are not arrays" if others else f"it holds {what}"
    raise ValueError(f"{path} is not a Flax param tree of arrays: {found}. Save the T5 itself "
                     "with transformers 4.x's FlaxT5ForConditionalGeneration.save_pretrained(DIR).")
  return {k: np.asarray(v, np.float32) for k, v in flat.items()}  # bf16/fp16 upcast


def _flatten(tree: dict, prefix: tuple[str, ...], flat: dict, others: list) -> None:
  """Arrays into `flat` by '/'-joined path; anything else (lists, numbers, empty dicts) named in
  `others`."""
  for key, value in tree.items():
    path = (*prefix, str(key))
    if isinstance(value, dict) and value:
      _flatten(value, path, flat, others)
    elif isinstance(value, np.ndarray):
      flat["/".join(path)] = value
    else:
      others.append(f"{'/'.join(path)} ({type(value).__name__})")


def flax_to_state_dict(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """HF Flax T5 params, '/'- or '.'-joined -> PyTorch T5 state dict (Dense kernels transposed to
  Linear weights): read_state_dict's form of a Flax checkpoint."""
  out = {}
  for key, value in flat.items():
    kernel = _SEPARATOR.split(key)[-1] == "kernel"
    out[flax_key_to_torch(key)] = np.ascontiguousarray(value.T) if kernel else value
  return out


# Between the names of a Flax param's path: '/' in msgpack trees (and their shard index), '.' in
# the keys of the model.safetensors that Flax save_pretrained(DIR, safe_serialization=True) wrote.
_SEPARATOR = re.compile(r"[/.]")


def flax_key_to_torch(key: str) -> str:
  """A Flax T5 param's name, '/'- or '.'-joined -> its PyTorch state dict key (a kernel or
  embedding leaf renamed weight): 'encoder/block/0/layer/0/SelfAttention/q/kernel' ->
  'encoder.block.0.layer.0.SelfAttention.q.weight'."""
  *owner, leaf = _SEPARATOR.split(key)
  return ".".join((*owner, "weight" if leaf in ("kernel", "embedding") else leaf))
