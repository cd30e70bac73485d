"""Helpers shared by the T5 tests."""
import io
import json
import os
import shutil


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
