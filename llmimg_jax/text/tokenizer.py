"""Tokenizers for the T5 text model: Hugging Face tokenizers, or the ByT5 byte tokenizer offline.

Every call pads to a fixed `max_length` so jitted functions see one shape, and truncation is
never silent: it is logged with how many tokens were cut.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence

import numpy as np

from llmimg_jax import cli

log = logging.getLogger(__name__)


# transformers, imported without torch, advises "PyTorch was not found. Models won't be
# available...": every command said so, but only its tokenizers are used here, which need none.
cli.drop_log_records("transformers", lambda text: text.startswith("PyTorch was not found."))


# What a cut text's warning advises by default: the caller may know better (a trained run's).
_RAISE_MAX_LENGTH = (
    "raise max_length to keep such texts whole, a run's config.text.max_length (train.py "
    "--config.text.max_length) or, from Python, the max_length of load_tokenizer or "
    "TextGenerator.from_pretrained")


class TextTokenizer:
  """Fixed-length batch tokenization around a transformers tokenizer. Picklable (grain workers)."""

  def __init__(self, hf_tokenizer, max_length: int):
    if max_length < 2:
      raise ValueError(f"max_length must be >= 2 (room for one token and EOS), got {max_length}.")
    if max_length >= 2**31:  # its arrays' allocation: the kernel's OOM kill, no message
      raise ValueError(f"max_length must be < 2**31 (int32 token positions), got {max_length}.")
    self.hf = hf_tokenizer
    self.max_length = int(max_length)

  @property
  def vocab_size(self) -> int:
    return len(self.hf)

  @property
  def pad_id(self) -> int:
    return int(self.hf.pad_token_id)

  @property
  def eos_id(self) -> int:
    return int(self.hf.eos_token_id)

  def __call__(self, texts: Iterable[str] | str, fix: str | None = None
               ) -> dict[str, np.ndarray]:
    """Returns input_ids and attention_mask, both int32 [batch, max_length]. Texts longer than
    max_length are truncated, with a warning that names the first and `fix`: what to do about it
    (default: raise max_length, naming where it is set; a caller that knows names its own)."""
    texts = as_texts([texts] if isinstance(texts, bytes) else texts)
    tokens, lengths = self.tokenize(texts)
    if too_long := [i for i, n in enumerate(lengths) if n > self.max_length]:
      first = _clean(texts[too_long[0]])
      short = first if len(first) <= 30 else f"{first[:30]}..."
      # Counted from 1, as sample.py's prompts and the text CLI's --text are ("Prompt #2 of 3").
      named = "The text" if len(texts) == 1 else f"Text #{too_long[0] + 1} of {len(texts)}"
      log.warning("%s (%r, %d tokens) is cut to max_length=%d tokens%s: %s.", named, short,
                  lengths[too_long[0]], self.max_length,
                  f" ({len(too_long)} of {len(texts)} texts are)" if len(too_long) > 1 else "",
                  fix or _RAISE_MAX_LENGTH)
    return tokens

  def tokenize(self, texts: Iterable[str] | str) -> tuple[dict[str, np.ndarray], list[int]]:
    """__call__'s tokens, truncated without a warning, and each text's token count before
    truncation (EOS included), for callers that name the cut texts themselves."""
    texts = as_texts([texts] if isinstance(texts, bytes) else texts)
    # verbose=False: transformers' 'longer than the specified maximum sequence length for this
    # model ... will result in indexing errors' is wrong for T5 (relative positions) and here.
    full = self.hf([_clean(t) for t in texts], add_special_tokens=True, truncation=False,
                   verbose=False)["input_ids"] if len(texts) else []
    ids = np.full((len(texts), self.max_length), self.pad_id, np.int32)  # [batch, length]
    mask = np.zeros((len(texts), self.max_length), np.int32)  # [batch, length]
    for row, seq in enumerate(full):
      if len(seq) > self.max_length:  # keep EOS at the end of a truncated sequence
        seq = list(seq[: self.max_length - 1]) + [self.eos_id]
      ids[row, : len(seq)] = seq
      mask[row, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask}, [len(seq) for seq in full]

  def decode(self, ids: np.ndarray) -> list[str]:
    """Decodes [batch, length] ids as transformers' `decode(row, skip_special_tokens=True)` does,
    whitespace included, after dropping ids past the tokenizer's vocabulary (a model's embedding
    may have more rows: t5's 32128 for 32100 tokens; ByT5's tokenizer raises on them)."""
    n = self.vocab_size
    return [self.hf.decode([int(t) for t in row if t < n], skip_special_tokens=True)
            for row in np.asarray(ids)]


def as_texts(texts: Iterable[str] | str, what: str = "texts") -> list:
  """`texts` as a list, read once (a generator's too); one str is one text, not one per
  character. A TypeError naming `what` for what is no iterable."""
  if isinstance(texts, str):
    return [texts]
  try:
    return list(texts)
  except TypeError:
    raise TypeError(f"Expected {what} as one str or an iterable of str; got "
                    f"{type(texts).__name__}: {texts!r:.80}.") from None


def _clean(text) -> str:
  """Text as valid UTF-8 str: invalid bytes and lone surrogates become U+FFFD, never a crash."""
  if isinstance(text, bytes):
    return text.decode("utf-8", errors="replace")
  if not isinstance(text, str):
    raise TypeError(f"Expected text as str or bytes, got {type(text).__name__}: {text!r:.80}")
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:  # e.g. os.fsdecode() of non-UTF-8 bytes (surrogateescape)
    text = text.encode("utf-8", errors="surrogatepass").decode("utf-8", errors="replace")
  return text


def load_tokenizer(path_or_name: str | None, max_length: int) -> TextTokenizer:
  """The tokenizer of a checkpoint directory or hub name; None gives the ByT5 byte tokenizer."""
  if path_or_name is None:
    from transformers import ByT5Tokenizer
    return TextTokenizer(ByT5Tokenizer(), max_length)
  hint = ("A checkpoint directory needs tokenizer files (tokenizer.json, spiece.model or "
          "tokenizer_config.json for ByT5) beside config.json; save them with "
          "tokenizer.save_pretrained(DIR).")
  try:
    hf = _tokenizer_class(path_or_name).from_pretrained(path_or_name)
  except PermissionError:  # it names the file; the files are there
    raise
  except (OSError, ValueError) as e:
    vocab = [os.path.join(os.fspath(path_or_name), f) for f in _VOCAB_FILES]
    if lfs := lfs_pointer_error(vocab):  # transformers said 'install tiktoken' or 'bad JSON'
      raise ValueError(lfs) from e
    raise FileNotFoundError(f"Could not load a tokenizer from {path_or_name!r}: {e}. {hint}") from e
  # Without a vocabulary file transformers 5 builds a T5Tokenizer with an empty vocabulary (every
  # word <unk>) instead of failing, e.g. for a directory of model.save_pretrained() alone.
  if (os.path.isdir(os.fspath(path_or_name)) and not type(hf).__name__.startswith("ByT5")
      and not any(os.path.isfile(os.path.join(os.fspath(path_or_name), f)) for f in _VOCAB_FILES)):
    raise FileNotFoundError(
        f"No tokenizer vocabulary in {path_or_name!r} (none of {_VOCAB_FILES}): every word would "
        f"be <unk>. {hint}")
  return TextTokenizer(hf, max_length)


_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def lfs_pointer_error(paths: Sequence[str]) -> str | None:
  """Which of `paths` are Git LFS pointers (a repository cloned without Git LFS holds ~130-byte
  text files in place of its weights and vocabulary) and how to fetch them; None if none are."""
  pointers = []
  for path in paths:
    try:
      if os.path.isfile(path) and os.path.getsize(path) < 1024:
        with open(path, "rb") as f:
          if f.read(len(_LFS_POINTER)) == _LFS_POINTER:
            pointers.append(path)
    except OSError:
      continue
  if not pointers:
    return None
  folder = os.path.dirname(pointers[0]) or "."
  return (f"{', '.join(pointers)}: Git LFS pointer file(s), not the real file(s); the checkpoint "
          f"was cloned without Git LFS. Fetch them with `git lfs install && git lfs pull` in "
          f"{folder}, or download the checkpoint with huggingface_hub.snapshot_download.")


_VOCAB_FILES = ("tokenizer.json", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model")


def _tokenizer_class(path_or_name):
  """The class named in a local tokenizer_config.json, else AutoTokenizer. Naming the class avoids
  AutoTokenizer's import of torch (seconds of CLI start-up)."""
  import transformers
  cfg_path = os.path.join(os.fspath(path_or_name), "tokenizer_config.json")
  if os.path.isfile(cfg_path):
    try:
      with open(cfg_path) as f:
        name = json.load(f).get("tokenizer_class")
      cls = getattr(transformers, name) if isinstance(name, str) else None
      if cls is not None and hasattr(cls, "from_pretrained"):
        return cls
    except (OSError, ValueError, AttributeError, ImportError):
      pass  # fall back to AutoTokenizer, which reports problems itself
  return transformers.AutoTokenizer
