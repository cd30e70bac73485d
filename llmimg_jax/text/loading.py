"""Loading Hugging Face T5 checkpoints into Flax: safetensors, pytorch_model.bin (both sharded too),
and transformers 4.x's Flax flax_model.msgpack (sharded too; flax_weights.py) in that order of
preference (the files' readers: weight_files.py); the model.safetensors of Flax names that
transformers 4.x's Flax T5s also saved ({"format": "flax"}) is renamed as their msgpack is.
TensorFlow's tf_model.h5 is not read.

Conversion (convert_state_dict) maps PyTorch state dict keys to the model's params (see modeling.py)
and transposes Linear weights; a Flax file's params are renamed to those keys, and kept in Flax's
layout. Every expected param must be present with the right shape; leftover checkpoint keys, and
params of the wrong shape, are named as the file holds them.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from llmimg_jax import output_files
from llmimg_jax.text.config import BYT5_VOCAB_SIZE, T5Config, first_token_id
from llmimg_jax.text.flax_weights import (FLAX, FLAX_INDEX, flax_key_to_torch, flax_to_state_dict,
                                          read_msgpack)
from llmimg_jax.text.modeling import T5EncoderModel, T5ForConditionalGeneration
from llmimg_jax.text.tokenizer import TextTokenizer, load_tokenizer
from llmimg_jax.text.weight_files import (read_safetensors, read_sharded, read_torch,
                                          safetensors_format, some_names, torch_to_numpy)

log = logging.getLogger(__name__)

Params = dict
SAFE, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
TORCH_FILES = (SAFE, SAFE_INDEX, BIN, BIN_INDEX)  # and their variants (model.fp16.safetensors)
WEIGHT_FILES = (*TORCH_FILES, FLAX, FLAX_INDEX)  # preferred in this order, variants before Flax
GENERATION_CONFIG = "generation_config.json"
# transformers' GenerationConfig defaults of the options `generate` here takes (or None: unset).
_DECODING_DEFAULTS = {"max_length": 20, "max_new_tokens": None, "min_length": 0,
                      "min_new_tokens": None, "num_beams": 1, "do_sample": False,
                      "temperature": 1.0, "top_k": 50, "top_p": 1.0, "length_penalty": 1.0}
# ... and for decoding options `generate` here does not have: transformers applies them from
# generation_config.json by default (e.g. a fine-tune's no_repeat_ngram_size=3, early_stopping).
# None is the default of each too (transformers 5 writes unset options as null).
_UNSUPPORTED_DEFAULTS = {
    "early_stopping": False, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0,
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "bad_words_ids": None,
    "force_words_ids": None, "constraints": None, "sequence_bias": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None, "renormalize_logits": False,
    "remove_invalid_values": False, "typical_p": 1.0, "min_p": None, "top_h": None,
    "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "num_beam_groups": 1, "diversity_penalty": 0.0,
    "penalty_alpha": None, "guidance_scale": None, "stop_strings": None, "max_time": None,
    "num_return_sequences": 1}
# Copies of shared.weight (used as it when it is missing), and a key transformers itself ignores.
_EMBEDDING_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_IGNORED_KEYS = (*_EMBEDDING_ALIASES,
                 "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")
_ENCODER_ONLY_HINT = (" (an encoder-only checkpoint, e.g. saved by T5EncoderModel: load it with "
                      "encoder_only=True, or --encode_out in `python -m llmimg_jax.text`; it "
                      "encodes but cannot generate)")


def resolve_checkpoint_dir(path_or_name: str | os.PathLike) -> str:
  """A local checkpoint directory, or a hub name downloaded (or found in the HF cache)."""
  path = os.path.expanduser(os.fspath(path_or_name))
  if not path.strip():  # an unset shell variable, not a hub name
    raise FileNotFoundError(f"T5 checkpoint {path!r} is empty: pass a directory with config.json "
                            f"and {SAFE}, or a hub name (without --model / None: the untrained "
                            "offline default).")
  if os.path.isdir(path):
    return path
  if why := output_files.why_closed(path, f"T5 checkpoint {path!r}"):  # not "not found"
    raise ValueError(why)
  if os.path.exists(path):
    raise NotADirectoryError(f"T5 checkpoint {path!r} is a file; pass the directory holding "
                             f"config.json and {SAFE}.")
  looks_local = (os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1
                 or os.sep != "/" and os.sep in path)
  if looks_local:
    raise FileNotFoundError(f"T5 checkpoint directory not found: {path!r}. Pass a directory "
                            f"with config.json and {SAFE} (or a hub name such as "
                            "'google/flan-t5-small').")
  try:
    from huggingface_hub import snapshot_download
    # A shard index with a variant's too (model.safetensors.index.fp16.json; _variant_weights).
    local = snapshot_download(path, allow_patterns=[
        "config.json", "*.safetensors", "model.safetensors.index*.json", "tokenizer*",
        "spiece.model", "special_tokens_map.json", "added_tokens.json", "generation_config.json"])
    if not {SAFE, SAFE_INDEX} & set(os.listdir(local)):  # older repos: PyTorch weights only
      local = snapshot_download(path, allow_patterns=["pytorch_model*.bin",
                                                      "pytorch_model.bin.index*.json"])
    if not any(f.endswith((".safetensors", ".bin")) for f in os.listdir(local)):  # Flax's only
      local = snapshot_download(path, allow_patterns=["flax_model*.msgpack", FLAX_INDEX])
    return local
  except Exception as e:  # network, auth, missing repo: all end here
    reason = " ".join(str(e).split())  # huggingface_hub's messages span lines
    raise FileNotFoundError(
        f"{path!r} is not a local directory and could not be fetched from the Hugging Face hub "
        f"({type(e).__name__}: {reason}). Offline, download it elsewhere and pass the directory "
        f"(config.json + {SAFE}), or set HF_HUB_OFFLINE=1 with a populated HF cache.") from e


def read_state_dict(ckpt_dir: str) -> dict[str, np.ndarray]:
  """The checkpoint's tensors as float32 numpy arrays, keyed by PyTorch names (a Flax checkpoint's
  params renamed and transposed to those: flax_model.msgpack, or the model.safetensors of Flax
  names that transformers 4.x's Flax save_pretrained(DIR, safe_serialization=True) wrote)."""
  state, flax = _read_weights(ckpt_dir)
  return flax_to_state_dict(state) if flax else state


def _read_weights(ckpt_dir: str) -> tuple[dict[str, np.ndarray], bool]:
  """(the checkpoint's float32 tensors, whether they are a Flax T5's params: keyed by Flax names
  as the file spells them and in Flax's layout, for convert_state_dict(..., from_flax=True))."""
  present = set(os.listdir(ckpt_dir))
  name = (next((n for n in TORCH_FILES if n in present), None)
          or _variant_weights(ckpt_dir, present)
          or next((n for n in (FLAX, FLAX_INDEX) if n in present), None))
  if name is None:
    raise FileNotFoundError(
        f"No T5 weights in {ckpt_dir!r}: expected one of {', '.join(WEIGHT_FILES)}; found "
        f"{sorted(present) or 'an empty directory'}. {_conversion_hint(present, ckpt_dir)}")
  flax = name in (FLAX, FLAX_INDEX)
  reader = (read_msgpack if flax else read_safetensors if ".safetensors" in name else read_torch)
  if name.endswith(".json"):  # a shard index, maybe a variant's: model.safetensors.index.fp16.json
    state = read_sharded(ckpt_dir, name, reader)  # a Flax index names '/'-joined Flax paths
  else:
    state = reader(os.path.join(ckpt_dir, name))
    if reader is read_safetensors and safetensors_format(os.path.join(ckpt_dir, name)) == "flax":
      flax = True  # '.'-joined Flax names
  return state, flax


# Weights of transformers' TensorFlow T5 (gone in transformers 5), and the option of transformers
# 4.x's from_pretrained that reads them.
_OTHER_FRAMEWORKS = {"tf_model.h5": "from_tf"}


def _conversion_hint(present: set[str], ckpt_dir: str) -> str:
  """How to get weights this loader reads, from the files that are there."""
  for file, option in _OTHER_FRAMEWORKS.items():
    if file in present:  # e.g. a model saved by transformers' TFT5ForConditionalGeneration
      return (f"{file} is not read here; convert it with transformers 4.x: "
              f"T5ForConditionalGeneration.from_pretrained(DIR, {option}=True)"
              ".save_pretrained(DIR).")
  if "checkpoints" in present and "config.json" in present:  # --model runs/quick
    return (f"{ckpt_dir} is a train.py run: its text encoder is in its checkpoints/, which "
            "sample.py and evaluate.py read (from Python: Sampler.from_workdir(DIR).models."
            "text_encoder with its text_params); this loader reads a Hugging Face T5's folder.")
  return "Save them with model.save_pretrained(DIR)."


def _variant_weights(ckpt_dir: str, present: set[str]) -> str | None:
  """The weights of save_pretrained(DIR, variant=...) (model.fp16.safetensors, its shard index, or
  pytorch_model.fp16.bin), as diffusers ships text encoders; None if none, an error if several."""
  found: dict[str, list[str]] = collections.defaultdict(list)
  for name in TORCH_FILES:  # in order of preference, as for unnamed weights
    base, ext = name.rsplit(".", 1)  # transformers' _add_variant: model.safetensors.index.fp16.json
    for file in sorted(present):
      if m := re.fullmatch(rf"{re.escape(base)}\.([^.-]+)\.{ext}", file):
        found[m.group(1)].append(file)
  if len(found) > 1:
    raise FileNotFoundError(
        f"{ckpt_dir!r} holds weights of several variants ({', '.join(sorted(found))}) and none "
        f"named {SAFE}: keep one variant's files, or re-save the one to use with "
        "model.save_pretrained(DIR).")
  if found:
    (variant, files), = found.items()
    log.info("%s: loading the %r variant's weights (%s).", ckpt_dir, variant, files[0])
    return files[0]
  return None


_NUMBERED = re.compile(r"(?<![^.])(block|layer)\.(\d+)(?![^.])")


def hf_key_to_path(key: str) -> tuple[tuple[str, ...], bool]:
  """'encoder.block.0.layer.1.DenseReluDense.wi.weight' -> (flax path, transpose?)."""
  out = _NUMBERED.sub(r"\1_\2", key).split(".")  # 'block.0' -> 'block_0'
  if out[-1] != "weight" or len(out) < 2:
    return tuple(out), False
  owner = out[-2]
  if owner in ("shared", "relative_attention_bias"):
    return tuple(out[:-1]) + ("embedding",), False
  if owner in ("layer_norm", "final_layer_norm"):
    return tuple(out), False
  return tuple(out[:-1]) + ("kernel",), True


def _model_and_init_args(config: T5Config, encoder_only: bool):
  model = (T5EncoderModel if encoder_only else T5ForConditionalGeneration)(config)
  ids = jnp.zeros((1, 2), jnp.int32)
  return model, ((ids, ids) if encoder_only else (ids, ids, ids))  # (ids, mask[, decoder ids])


def param_shapes(config: T5Config, encoder_only: bool = False) -> Params:
  """The param tree of shape/dtype structs, without allocating."""
  model, args = _model_and_init_args(config, encoder_only)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)["params"]


def convert_state_dict(state: dict[str, Any], config: T5Config, *,
                       encoder_only: bool = False, source: str = "checkpoint",
                       from_flax: bool = False) -> tuple[T5Config, Params]:
  """HF PyTorch T5 state dict -> (config, Flax params). The config is untied if the checkpoint
  carries its own lm_head; decoder/lm_head keys are skipped when encoder_only. from_flax: `state`
  is a Flax T5's params instead, keyed by '/'- or '.'-joined names ('shared/embedding') with
  [in, out] kernels, as a Flax file holds them: they are renamed, not transposed, and errors name
  them as given. Values: arrays, or torch tensors (a model's state_dict(): float32 NumPy here)."""
  state = {k: torch_to_numpy(v) for k, v in state.items()}
  file_names = {}  # a Flax file's names, by the PyTorch keys they are renamed to
  if from_flax:
    file_names = {flax_key_to_torch(k): k for k in state}
    state = {k: state[name] for k, name in file_names.items()}
  state = dict(state)
  if "shared.weight" not in state:  # some exports keep the embedding only under an alias
    alias = next((k for k in _EMBEDDING_ALIASES if k in state), None)
    if alias is not None:
      state["shared.weight"] = state[alias]
  for key in _IGNORED_KEYS:
    state.pop(key, None)
  lm_head = state.pop("lm_head.weight", None)
  if encoder_only:
    state = {k: v for k, v in state.items() if not k.startswith("decoder.")}
  elif lm_head is not None and config.tie_word_embeddings and not np.array_equal(
      lm_head.T if from_flax else lm_head, state.get("shared.weight")):
    log.info("%s has an lm_head distinct from the shared embedding: loading it untied.", source)
    config = dataclasses.replace(config, tie_word_embeddings=False)
  if not encoder_only and not config.tie_word_embeddings:
    if lm_head is None:
      no_decoder = not any(k.startswith("decoder.") for k in state)  # e.g. FLAN-T5's encoder
      raise ValueError(f"{source}: config has tie_word_embeddings=false but the weights lack "
                       f"'lm_head.weight'{_ENCODER_ONLY_HINT if no_decoder else ''}.")
    state["lm_head.weight"] = lm_head

  expected = traverse_util.flatten_dict(param_shapes(config, encoder_only))
  flat, unexpected, bad_shapes, misshaped = {}, [], [], set()
  for key, value in state.items():
    path, linear = hf_key_to_path(key)
    if path not in expected:
      unexpected.append(key)
      continue
    transpose = linear and not from_flax  # a Flax kernel is in the model's [in, out] already
    value = value.T if transpose else value
    if tuple(value.shape) != tuple(expected[path].shape):
      bad_shapes.append(_shape_mismatch(file_names.get(key, key), path, transpose,
                                        tuple(value.shape), tuple(expected[path].shape),
                                        from_flax))
      misshaped.add(path)
      continue
    flat[path] = value
  missing = ["/".join(p) for p in expected if p not in flat and p not in misshaped]  # named once
  problems = [f"{what} {some_names(names)}" for what, names in (
      ("missing params", missing),
      ("unexpected checkpoint keys", sorted(file_names.get(k, k) for k in unexpected)),
      ("shape mismatches", bad_shapes)) if names]
  if problems:
    raise ValueError(f"{source} does not match its T5 config: " + "; ".join(problems)
                     + _mismatch_hint(unexpected, missing, file_names, expected))
  return config, traverse_util.unflatten_dict(flat)


def _mismatch_hint(unexpected: list[str], missing: list[str], file_names: dict[str, str],
                   expected: dict[tuple[str, ...], Any]) -> str:
  """The likely cause of keys that do not fit the config (unexpected ones as PyTorch keys,
  missing ones as '/'-joined params), to end the error with; '' if none is known."""
  # The T5's own keys under a prefix ('transformer.', or a Flax file's 'model/': a Flax name
  # keeps its first part when renamed, so it is cut where the PyTorch key's first '.' is).
  wrapped = collections.Counter(file_names.get(k, k)[:k.index(".") + 1] for k in unexpected
                                if "." in k and hf_key_to_path(k.split(".", 1)[1])[0] in expected)
  if wrapped:
    return (f" (its T5 weights are under '{wrapped.most_common(1)[0][0]}': a checkpoint of "
            "another T5 class, e.g. T5ForSequenceClassification; save its T5 with "
            "T5ForConditionalGeneration or T5EncoderModel)")
  if missing and all(m.startswith("decoder/") or m.startswith("lm_head/") for m in missing):
    return _ENCODER_ONLY_HINT
  return ""


def _shape_mismatch(key: str, path: tuple[str, ...], transpose: bool, shape: tuple[int, ...],
                    model: tuple[int, ...], from_flax: bool) -> str:
  """A param of the wrong shape, named and shaped as its file holds it: a Flax file's param (an
  [in, out] kernel, the model's own layout), a PyTorch file's key ([out, in] Linear)."""
  if from_flax:
    return f"{key}: checkpoint {shape} vs model {model}"
  if transpose:
    shape, model = shape[::-1], model[::-1]
  return (f"{key}: checkpoint {shape} vs model {model} (as {'/'.join(path)}"
          f"{', transposed' if transpose else ''})")


def load_t5(path_or_name: str | os.PathLike, dtype: Any = jnp.float32, *,
            encoder_only: bool = False) -> tuple[T5Config, Params]:
  """(config, params) from a checkpoint directory or hub name. Params are `dtype` arrays (fp32
  by default) with the layout of T5ForConditionalGeneration, or T5EncoderModel if encoder_only
  (which does not read generation_config.json: an encoder does not generate)."""
  ckpt_dir = resolve_checkpoint_dir(path_or_name)
  config = T5Config.from_json_file(os.path.join(ckpt_dir, "config.json"))
  if not encoder_only:
    config = _with_generation_config(config, ckpt_dir)
  state, from_flax = _read_weights(ckpt_dir)
  config, params = convert_state_dict(state, config, encoder_only=encoder_only, source=ckpt_dir,
                                      from_flax=from_flax)
  return config, jax.tree.map(lambda x: jnp.asarray(x, dtype), params)


def _with_generation_config(config: T5Config, ckpt_dir: str) -> T5Config:
  """The decoder start, EOS and pad ids of generation_config.json win over config.json's, as in
  transformers' `generate`; its decoding defaults (num_beams, ...), and the options `generate`
  here does not have (no_repeat_ngram_size, early_stopping, ...), are named, not applied. Without
  the file transformers takes those from config.json (where checkpoints saved before
  generation_config.json existed keep them): they are named there."""
  path = os.path.join(ckpt_dir, GENERATION_CONFIG)
  if not os.path.exists(path):
    config_path = os.path.join(ckpt_dir, "config.json")  # read (a JSON object) by the caller
    with open(config_path, encoding="utf-8") as f:
      _name_decoding_options(json.load(f), config_path)
    return config
  try:
    with open(path, encoding="utf-8") as f:
      gen = json.load(f)
    if not isinstance(gen, dict):
      raise ValueError(f"expected a JSON object, got {type(gen).__name__}")
  except (OSError, ValueError) as e:
    raise ValueError(f"Could not read {path} ({e}); fix it, or delete it to generate with "
                     "config.json's token ids.") from None
  try:  # int()'s and T5Config's errors for a bad id name no file
    ids = {}
    for name in ("decoder_start_token_id", "eos_token_id", "pad_token_id"):
      value = first_token_id(gen.get(name), name, path)
      if value is not None and value != getattr(config, name):
        ids[name] = value
    config = dataclasses.replace(config, **ids)
  except (TypeError, ValueError) as e:
    raise ValueError(f"Invalid token id in {path}: {e}; fix it, or delete it to generate with "
                     "config.json's token ids.") from None
  _name_decoding_options(gen, path)
  return config


def _name_decoding_options(gen: dict, path: str) -> None:
  """Warns of the decoding options in `gen` (read from `path`) that transformers' generate would
  apply by default and `generate` here does not."""
  for defaults, what in (
      (_DECODING_DEFAULTS, "decoding defaults (%s) that llmimg_jax does not apply: pass them to "
                           "`generate` to decode as transformers would (max_length=L as "
                           "max_new_tokens=L-1, min_length=L as min_new_tokens=L-1: "
                           "transformers counts the decoder start token)."),
      (_UNSUPPORTED_DEFAULTS, "decoding options (%s) that llmimg_jax's `generate` does not "
                              "support: transformers' generate applies them by default, so its "
                              "outputs will differ.")):
    given = {k: v for k, v in gen.items() if k in defaults and v is not None and v != defaults[k]}
    if given:
      log.warning("%s sets " + what, path, ", ".join(f"{k}={v}" for k, v in sorted(given.items())))


def init_params(config: T5Config, rng: jax.Array, *, encoder_only: bool = False) -> Params:
  """Freshly initialised fp32 params (transformers' T5 init scheme)."""
  model, args = _model_and_init_args(config, encoder_only)
  return jax.jit(model.init)(rng, *args)["params"]


def load_pretrained(path_or_name: str | os.PathLike | None, max_length: int, *,
                    dtype: Any = jnp.float32, seed: int = 0, config: T5Config | None = None,
                    encoder_only: bool = False) -> tuple[T5Config, Params, TextTokenizer]:
  """(config, params, tokenizer). None gives the offline default: the ByT5 byte tokenizer and a
  freshly initialised (untrained) `config`, by default T5Config.byt5_small_scratch().
  encoder_only: only the embedding and the encoder (what encoding needs; a T5EncoderModel
  checkpoint has nothing else)."""
  if path_or_name is None:
    from llmimg_jax.text.generator import check_seed  # pylint: disable=g-import-not-at-top
    check_seed(seed)  # imported here: generator imports this module
    log.warning("No T5 checkpoint given: using a freshly initialised, UNTRAINED byte-level T5 "
                "(T5Config.byt5_small_scratch) with the ByT5 tokenizer; its outputs are noise.")
    config = config or T5Config.byt5_small_scratch()
    if config.vocab_size < BYT5_VOCAB_SIZE:
      raise ValueError(f"The offline default uses the ByT5 tokenizer ({BYT5_VOCAB_SIZE} ids); "
                       f"config.vocab_size={config.vocab_size} is too small.")
    params = init_params(config, jax.random.PRNGKey(seed), encoder_only=encoder_only)
    return config, jax.tree.map(lambda x: x.astype(dtype), params), load_tokenizer(None, max_length)
  if config is not None:
    raise ValueError("config= is only for the offline default (path_or_name=None); a checkpoint "
                     "brings its own config.json.")
  ckpt_dir = resolve_checkpoint_dir(path_or_name)
  config, params = load_t5(ckpt_dir, dtype, encoder_only=encoder_only)
  tokenizer = load_tokenizer(ckpt_dir, max_length)
  if tokenizer.vocab_size > config.vocab_size:
    raise ValueError(f"Tokenizer in {ckpt_dir} has {tokenizer.vocab_size} tokens but the model's "
                     f"vocab_size is {config.vocab_size}: tokenizer and weights do not match.")
  return config, params, tokenizer
