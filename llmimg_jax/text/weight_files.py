"""Readers of transformers' PyTorch-side weight files into float32 numpy state dicts keyed by
PyTorch names: safetensors, pytorch_model.bin, and the shard index of either (or of Flax's msgpack
shards, whose reader is flax_weights.read_msgpack). loading.read_state_dict picks the file."""
from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np

from llmimg_jax.text.tokenizer import lfs_pointer_error


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Read on the host: framework="flax" makes the same NumPy arrays, then copies each to the
  default device. bf16 is ml_dtypes.bfloat16, which jax (imported by llmimg_jax.text) registers
  with NumPy: without it safetensors' NumPy reader does not know the dtype."""
  from safetensors import safe_open
  open(path, "rb").close()  # safetensors reports any error opening it as "No such file"
  out = {}
  try:
    with safe_open(path, framework="np") as f:
      for key in f.keys():
        out[key] = np.asarray(f.get_tensor(key), np.float32)
  except Exception as e:
    if lfs := lfs_pointer_error([path]):
      raise ValueError(lfs) from e
    raise ValueError(f"Could not read safetensors file {path}: {e}. Is it truncated? "
                     "Re-save the checkpoint with model.save_pretrained(DIR).") from e
  return out


def safetensors_format(path: str) -> str | None:
  """The 'format' save_pretrained wrote in a safetensors file's metadata: 'pt', or 'flax' from
  transformers 4.x's Flax models (safe_serialization=True: '.'-joined Flax names and layout)."""
  from safetensors import safe_open
  with safe_open(path, framework="np") as f:
    return (f.metadata() or {}).get("format")


def read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise ImportError(
        f"{path} is a PyTorch pickle and torch is not installed. Install torch (CPU build is "
        "enough) or convert the checkpoint to safetensors: "
        "T5ForConditionalGeneration.from_pretrained(DIR).save_pretrained(DIR, "
        "safe_serialization=True).") from e
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    if lfs := lfs_pointer_error([path]):
      raise ValueError(lfs) from e
    raise ValueError(
        f"Could not read PyTorch weights {path} ({torch_load_detail(e)}): the file is cut short "
        "or corrupt, or holds objects besides tensors, which are not unpickled (that can run "
        "code). Re-download it, or convert a file you trust to safetensors with transformers: "
        "T5ForConditionalGeneration.from_pretrained(DIR, weights_only=False)"
        ".save_pretrained(DIR).") from e
  fix = "Save the T5 itself with model.save_pretrained(DIR)."
  if not isinstance(state, dict):  # e.g. a training checkpoint: no .items/.detach to call
    raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors. {fix}")
  others = [f"{k} ({type(v).__name__})" for k, v in state.items()
            if not isinstance(v, torch.Tensor)]
  if others:
    raise ValueError(f"{path} is not a state dict of tensors: {some_names(others)} are not tensors "
                     f"(a training checkpoint that wraps one?). {fix}")
  return {k: torch_to_numpy(v) for k, v in state.items()}


def torch_to_numpy(value: Any) -> Any:
  """A torch tensor as a float32 NumPy array (NumPy has no bfloat16; jax.jit takes no tensor);
  anything else as it is."""
  if not (hasattr(value, "detach") and hasattr(value, "numpy")):
    return value
  return value.detach().cpu().float().numpy()


def torch_load_detail(e: Exception) -> str:
  """torch.load's error in one line (its first sentence; the exception's type for an empty file's
  message-less EOFError). A weights-only load that fails re-raises the unpickler's own error as
  `pickle.UnpicklingError(advice + message) from None`: paragraphs advising weights_only=False,
  with terminal escapes, and for a blocked module no reason at all in the first sentence. That
  error is the context it suppressed (an UnpicklingError; a RuntimeError in older torch), so
  the reason is read there, whatever the advice says."""
  if (isinstance(e, pickle.UnpicklingError) and e.__suppress_context__
      and isinstance(e.__context__, Exception)):
    e = e.__context__
  text = str(e).strip().split("\n")[0].split(". ")[0].rstrip(".")
  return text or type(e).__name__


def read_sharded(ckpt_dir: str, index_name: str, reader: Callable[[str], dict[str, np.ndarray]]
                 ) -> dict[str, np.ndarray]:
  index_path = os.path.join(ckpt_dir, index_name)
  try:
    with open(index_path) as f:
      weight_map = json.load(f)["weight_map"]
    if not isinstance(weight_map, dict):  # a list or null: no .items to call
      raise TypeError(f"'weight_map' is a JSON {type(weight_map).__name__}")
    if bad := next(((k, v) for k, v in weight_map.items() if not isinstance(v, str)), None):
      raise TypeError(f"'weight_map' maps {bad[0]!r} to {json.dumps(bad[1])}")
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ValueError(f"Malformed shard index {index_path}: {e}; it needs a 'weight_map' object "
                     "of tensor name -> shard file.") from e
  out = {}
  for shard in sorted(set(weight_map.values())):
    shard_path = os.path.join(ckpt_dir, shard)
    if not os.path.isfile(shard_path):
      raise FileNotFoundError(f"Shard {shard_path} listed in {index_path} is missing.")
    out.update(reader(shard_path))
  missing = sorted(set(weight_map) - set(out))
  if missing:
    raise ValueError(f"Tensors listed in {index_path} but absent from their shards: {missing[:10]}")
  return out


def some_names(names: list[str], limit: int = 8) -> str:
  """The first `limit` names, comma-joined, and how many more (a real T5 has hundreds of params):
  what every loading error lists names with."""
  more = f" and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more
