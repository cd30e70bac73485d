"""Helpers shared by the T5 tests: tiny random transformers T5s, checkpoint folders, an offline
sentencepiece vocabulary."""
from __future__ import annotations

import io
import json
import os
import shutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
  import transformers

BYT5_VOCAB = 384
MAX_LEN = 32  # the TextGenerator fixture's max_length (tests/text/conftest.py)


def copy_config(src: str, dst: str) -> None:
  """`src`'s config.json into `dst` (made if needed), for a checkpoint folder built by hand."""
  os.makedirs(dst, exist_ok=True)
  shutil.copy(os.path.join(src, "config.json"), dst)


def sentencepiece_tokenizer_dir(path: str) -> str:
  """A tiny T5 sentencepiece vocabulary (spiece.model, unigram, <pad>=0 </s>=1 <unk>=2) trained
  offline in `path`, with a tokenizer_config.json naming T5Tokenizer; returns `path`."""
  import sentencepiece as spm
  corpus = ["a red circle on a blue square", "the small green triangle",
            "hello world, a longer sentence"] * 50
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, vocab_size=30,
                                 model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                 hard_vocab_limit=False, minloglevel=2)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "spiece.model"), "wb") as f:
    f.write(model.getvalue())
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "T5Tokenizer", "extra_ids": 0}, f)
  return path


def _hf_config(**kw) -> transformers.T5Config:
  import transformers
  return transformers.T5Config(**_hf_kwargs(**kw))


def _hf_kwargs(**kw) -> dict:
  base = dict(vocab_size=BYT5_VOCAB, d_model=32, d_kv=8, d_ff=64, num_heads=4,
              relative_attention_num_buckets=16, relative_attention_max_distance=32,
              initializer_factor=2.0, dropout_rate=0.1, pad_token_id=0, eos_token_id=1,
              decoder_start_token_id=0)
  base.update(kw)
  return base


def _random_t5(seed: int, **kw) -> transformers.T5ForConditionalGeneration:
  """A random T5 of _hf_config(**kw): weights drawn with `seed`, layer norms at 1 (see
  tests/text/conftest.py)."""
  import torch
  import transformers
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(_hf_config(**kw)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.fill_(1.0)
  return model


def _save(model, path: str) -> None:
  """`model` and a ByT5 tokenizer saved by transformers in `path`."""
  import transformers
  model.save_pretrained(path)
  transformers.ByT5Tokenizer().save_pretrained(path)
