"""Strings in, strings (or encoder states) out: a T5 with its tokenizer."""
from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llmimg_jax import cli
from llmimg_jax.text.config import T5Config, compute_dtype
from llmimg_jax.prng import raw_key_length
from llmimg_jax.text.generate import generate
from llmimg_jax.text.loading import load_pretrained
from llmimg_jax.text.modeling import T5EncoderModel
from llmimg_jax.text.tokenizer import TextTokenizer


# The PRNG implementations JAX registers itself: raw key data uint32 [2] (threefry2x32) or [4]
_JAX_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


def _is_key(x: Any) -> bool:
  """Whether `x` is taken for a JAX PRNG key: a typed one (jax.random.key), or a JAX uint32 array
  whose last dimension is a raw key length of any of JAX's PRNG implementations or of the default
  one (2: jax.random.PRNGKey under threefry2x32; 4: under rbg or unsafe_rbg), whatever
  jax_default_prng_impl is. Raw key data name no implementation (jax.random.key_impl reads the
  default's for them) and may equal seeds (PRNGKey(7) is uint32 [0, 7] under threefry2x32): a key
  made under another default must not be read as seeds. Other JAX int arrays are seeds, as
  NumPy's are."""
  return isinstance(x, jax.Array) and (
      jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
      or (x.dtype == jnp.uint32 and x.ndim >= 1 and x.shape[-1] in _raw_key_lengths()))


def _raw_key_lengths() -> set[int]:
  """The last dimensions of raw key data: JAX's own implementations' and the default's."""
  return {raw_key_length(impl) for impl in (*_JAX_IMPLS, jax.config.jax_default_prng_impl)}


def _key_error(key: jax.Array, name: str, seeds_too: bool = False) -> TypeError:
  """The error for a PRNG key (`_is_key`) passed as a seed; seeds_too: where int seeds, one per
  item, are taken too, says which uint32 arrays are read as raw keys instead."""
  raw = "" if not seeds_too or jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else (
      f" A JAX uint32 array whose last dimension is "
      f"{' or '.join(map(str, sorted(_raw_key_lengths())))} is taken for raw key data "
      "(jax.random.PRNGKey's) under any jax_default_prng_impl: pass int seeds as ints, a list or "
      "a NumPy array.")
  return TypeError(f"{name} is a JAX array ({key.dtype} {list(key.shape)}: a PRNG key?); pass an "
                   f"int seed, from which the key is made.{raw}")


def check_seed(seed: int, name: str = "seed") -> int:
  """A PRNG seed in [0, 2**32), as sample.py and train.py take them, as an int, or a ValueError
  naming it (`name`: as the caller spells it, e.g. '--seed'); a TypeError for one that is not an
  int (numpy and JAX integer scalars pass, as the Sampler's seed; bool does not): 2.5 would fail
  in jax.random.PRNGKey as 'got JitTracer', and a PRNG key is named as one.
  jax.random.PRNGKey keeps a seed's low 32 bits (2**32 gave seed 0's key, -1 that of 2**32 - 1)
  and raises OverflowError past int64."""
  if _is_key(seed):  # its repr spans lines (a typed key's, 'overlaying: ...')
    raise _key_error(seed, name)
  if (value := cli.as_int(seed)) is None:
    got = (f" is a JAX array ({seed.dtype} {list(seed.shape)})" if isinstance(seed, jax.Array)
           else f"={seed!r} is a {type(seed).__name__}")
    raise TypeError(f"{name}{got}; pass an int.")
  if not 0 <= value < 2**32:
    raise ValueError(f"{name}={value} must be in [0, 2**32).")
  return value


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def _encode(params, input_ids, attention_mask, *, config, dtype):
  return T5EncoderModel(config, dtype).apply({"params": params}, input_ids, attention_mask)


# generate()'s or transformers' arguments that TextGenerator.generate sets itself or names otherwise
_NOT_KW = {"rng": "pass seed=, an int or one per text: the keys are made from it",
           "dtype": "the compute dtype is the TextGenerator's: from_pretrained(..., dtype=...)",
           "max_length": "pass max_new_tokens=; transformers' max_length counts the decoder "
                         "start token too: max_new_tokens = max_length - 1"}


class TextGenerator:
  """`TextGenerator.from_pretrained(path_or_name)`; `.generate(texts)`, `.encode(texts)`."""

  def __init__(self, config: T5Config, params: dict, tokenizer: TextTokenizer,
               dtype: Any = jnp.float32):
    if tokenizer.vocab_size > config.vocab_size:
      raise ValueError(f"Tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size "
                       f"is {config.vocab_size}.")
    self.config, self.params, self.tokenizer = config, params, tokenizer
    self.dtype = compute_dtype(dtype)

  @classmethod
  def from_pretrained(cls, path_or_name: str | os.PathLike | None = None, max_length: int = 64,
                      dtype: Any = jnp.float32, seed: int = 0,
                      encoder_only: bool = False) -> TextGenerator:
    """None: the untrained offline default (ByT5 tokenizer + fresh T5, initialised from `seed`),
    with a warning.
    encoder_only: loads what `encode` needs (a T5EncoderModel checkpoint has nothing else)."""
    dtype = compute_dtype(dtype)  # before a load that may take minutes
    check_seed(seed)
    config, params, tokenizer = load_pretrained(path_or_name, max_length, seed=seed,
                                                encoder_only=encoder_only)
    return cls(config, params, tokenizer, dtype)

  def generate(self, texts: Iterable[str] | str, *, max_new_tokens: int = 32,
               seed: int | Sequence[int] = 0, **kw: Any) -> list[str]:
    """kw: num_beams, do_sample, temperature, top_k, top_p, length_penalty, min_new_tokens.

    seed (sampling): one int for the call, or one per text (a list, a NumPy or JAX int array), so
    that a text's sample does not depend on the other texts; a PRNG key is refused, and so is a
    JAX uint32 array whose last dimension is 2 or 4 (raw key data). Texts come back as
    transformers decodes them, whitespace included.
    """
    return self.generate_tokens(self.tokenizer(texts), max_new_tokens=max_new_tokens, seed=seed,
                                **kw)

  def generate_tokens(self, batch: dict[str, np.ndarray], *, max_new_tokens: int = 32,
                      seed: int | Sequence[int] = 0, **kw: Any) -> list[str]:
    """`generate` for texts already tokenized: input_ids and attention_mask [batch, max_length]."""
    if wrong := [f"{k}= ({fix})" for k, fix in _NOT_KW.items() if k in kw]:
      raise TypeError(f"TextGenerator.generate takes no {'; no '.join(wrong)}.")
    rows = len(batch["input_ids"])
    if _is_key(seed):  # typed, or uint32 [..., 2] or [..., 4]: a key, not 2 or 4 seeds
      raise _key_error(seed, "seed", seeds_too=True)
    # One seed: a scalar, whose check_seed names a non-int (len() would not).
    one_seed = np.ndim(seed) == 0
    if not one_seed and len(seed) != rows:
      raise ValueError(f"seed must be one int or one per text ({rows} texts); got {len(seed)}.")
    seeds = [check_seed(s, "seed" if one_seed else f"seed[{i}]")
             for i, s in enumerate([seed] if one_seed else seed)]
    if rows == 0:
      return []
    rng = (jax.random.PRNGKey(seeds[0]) if one_seed
           else jnp.stack([jax.random.PRNGKey(s) for s in seeds]))  # a key, or one per text
    ids = generate(self.params, self.config, batch["input_ids"], batch["attention_mask"],
                   max_new_tokens=max_new_tokens, rng=rng, dtype=self.dtype, **kw)
    return self.tokenizer.decode(np.asarray(ids))

  def encode(self, texts: Iterable[str] | str) -> np.ndarray:
    """Encoder last hidden states, float32 [batch, max_length, d_model] (padding rows included)."""
    return self.encode_tokens(self.tokenizer(texts))

  def encode_tokens(self, batch: dict[str, np.ndarray]) -> np.ndarray:
    """`encode` for texts already tokenized: input_ids and attention_mask [batch, max_length]."""
    if not len(batch["input_ids"]):
      return np.zeros((0, self.tokenizer.max_length, self.config.d_model), np.float32)
    enc_params = {k: self.params[k] for k in ("shared", "encoder")}
    out = _encode(enc_params, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]),
                  config=self.config, dtype=self.dtype)
    return np.asarray(out, np.float32)
