"""Caption expansion: a seq2seq T5 rewrites short prompts into the longer captions a GAN saw."""
from __future__ import annotations

import dataclasses
import logging
import os
import string
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmimg_jax.sample.checks import DEFAULT_TEMPLATE, check_integer, check_options
from llmimg_jax.text import TextGenerator

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CaptionExpander:
  """`CaptionExpander.from_pretrained(path_or_name)(["a red circle"]) -> ["a small red ..."]`.

  Each prompt is put into `template` (which must contain `{prompt}`) and decoded greedily
  (num_beams=1, do_sample=False), with beam search (num_beams > 1) or by sampling (do_sample;
  temperature and top_p other than 1.0 are refused without it).
  A caption's whitespace is collapsed (one space between words, none at the ends: the decoded
  text keeps what the model generated). An empty expansion falls back to the prompt itself, with
  a warning.
  Prompts are generated up to `batch_size` at a time, in batches of 1, 2, 3, 4, 6, 8, 12, ... rows
  (batch_bucket; padded by repeating the last prompt), so calls with any number of prompts share
  a few compiled programs.
  """
  generator: TextGenerator
  template: str = DEFAULT_TEMPLATE
  max_new_tokens: int = 48
  num_beams: int = 1
  do_sample: bool = False
  temperature: float = 1.0
  top_p: float = 1.0
  seed: int = 0
  batch_size: int = 32

  def __post_init__(self):
    check_options(self.template, self.max_new_tokens, self.num_beams, self.do_sample,
                  self.temperature, self.top_p)
    for name in ("batch_size", "seed"):
      check_integer(getattr(self, name), f"CaptionExpander {name}")
    if self.batch_size < 1:
      raise ValueError(f"CaptionExpander batch_size={self.batch_size} must be >= 1.")

  def _check_room_for_prompts(self) -> None:
    """A template whose text before {prompt} fills the expander's input: every prompt would be
    cut away whole, each getting the same caption, after a warning that prompts are cut short."""
    tokenizer = self.generator.tokenizer
    _, (length,) = tokenizer.tokenize([_text_before_prompt(self.template)])  # EOS included
    if length >= tokenizer.max_length:  # truncation keeps max_length - 1 tokens and EOS
      raise ValueError(
          f"The expander's template reads {length - 1} tokens before {{prompt}}, and its "
          f"max_length={tokenizer.max_length} keeps {tokenizer.max_length - 1} (and EOS): no "
          "prompt would be read. Raise max_length (sample.py --expand_max_length) or shorten "
          "the template.")

  @classmethod
  def from_pretrained(cls, path_or_name: str | os.PathLike, max_length: int = 64,
                      **kw: Any) -> CaptionExpander:
    """A T5ForConditionalGeneration checkpoint directory or hub name (with its tokenizer)."""
    return cls(TextGenerator.from_pretrained(path_or_name, max_length=max_length), **kw)

  def settings(self) -> dict[str, Any]:
    """What decides the expansions besides the model (recorded in samples.jsonl). A sampled
    expansion's seed is the expander's own, not Sampler.sample's (sample.py gives both --seed)."""
    settings = {"template": self.template, "max_length": self.generator.tokenizer.max_length,
                "max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
                "do_sample": self.do_sample}
    if self.do_sample:
      settings.update(temperature=self.temperature, top_p=self.top_p, seed=self.seed)
    return settings

  def __call__(self, prompts: Sequence[str]) -> list[str]:
    inputs = [self.template.format(prompt=p) for p in prompts]
    if not inputs:
      return []
    self._check_room_for_prompts()
    tokenizer = self.generator.tokenizer
    tokens, lengths = tokenizer.tokenize(inputs)
    if cut := [i for i, n in enumerate(lengths) if n > tokenizer.max_length]:
      log.warning("The expander reads the first %d tokens of template + prompt: %d of %d "
                  "prompts are cut short (prompt #%d has %d tokens); raise its max_length "
                  "(sample.py --expand_max_length).", tokenizer.max_length, len(cut),
                  len(inputs), cut[0] + 1, lengths[cut[0]])
    kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams}
    if self.do_sample:
      kw.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
    # A sampled expansion depends on the seed and its own input only, not on the other prompts.
    seeds = np.array([zlib.crc32(f"{self.seed}\0{text}".encode("utf-8", "surrogatepass"))
                      for text in inputs], np.uint32)
    captions: list[str] = []
    size = batch_bucket(len(inputs), self.batch_size)  # 1, 2, 3, 4, 6, ...: few programs
    for start in range(0, len(inputs), size):
      # The last chunk repeats its last input: one compiled generation for every chunk.
      rows = np.minimum(np.arange(start, start + size), len(inputs) - 1)
      out = self.generator.generate_tokens({k: v[rows] for k, v in tokens.items()},
                                           seed=[int(s) for s in seeds[rows]], **kw)
      captions += out[:len(inputs) - start]
    result = []
    for prompt, caption in zip(prompts, captions):
      caption = " ".join(caption.split())
      if not caption:
        log.warning("The expander produced an empty caption for %r; using the prompt itself.",
                    prompt)
        caption = prompt
      result.append(caption)
    return result


def _text_before_prompt(template: str) -> str:
  """What `template` puts before its first {prompt} ({{ and }} read as braces)."""
  text = ""
  for literal, field, _, _ in string.Formatter().parse(template):
    text += literal
    if field is not None:
      break
  return text


def batch_bucket(count: int, cap: int, multiple: int = 1) -> int:
  """Rows of each compiled call for `count` items, at most `cap` (a multiple of `multiple`) per
  call: for an equal share of the ceil(count / cap) calls, the smallest `multiple` times 1, 2, 3,
  4, 6, 8, 12, ... (2**k and 3 * 2**k) that holds it. Calls with 1, 2, 3, 5... items then share a
  few compiled programs (about 2 * log2(cap / multiple)) instead of one per count. Above
  2 * multiple rows a call pads less than a third of them; powers of two alone would pad up to
  half (17 items: 32 rows, not 24; 65 items at cap 64: two calls of 64, not of 48)."""
  calls = -(-count // cap)
  share = -(-count // calls)  # rows each call needs
  unit = 1
  while unit * multiple < min(share, cap):
    unit = unit // 3 * 4 if unit & (unit - 1) else max(unit * 3 // 2, 2)  # 3*2**j -> 2**(j+2)
  return min(unit * multiple, cap)
