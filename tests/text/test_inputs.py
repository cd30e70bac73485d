"""Awkward and hostile text inputs (empty, 100,000 characters, invalid UTF-8, control characters)
through the tokenizer and the TextGenerator wrapper, decode's whitespace and ids past the
vocabulary, and the arguments they refuse. The `python -m llmimg_jax.text` CLI:
tests/text/test_cli.py."""
from __future__ import annotations

import dataclasses
import importlib
import logging
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from llmimg_jax.text import (T5Config, T5ForConditionalGeneration, TextGenerator, TextTokenizer,
                             generate, load_pretrained, load_tokenizer)
from tests.text.utils import MAX_LEN, sentencepiece_tokenizer_dir

AWKWARD = ["", "x" * 10_000, "日本語のテキストと絵文字 🦊🎨👩‍👩‍👧", b"\xff\xfe invalid \xc3\x28 utf-8",
           "lone surrogate \udcff here"]


def test_awkward_texts_encode_and_generate(generator, caplog):
  with caplog.at_level(logging.WARNING):
    batch = generator.tokenizer(AWKWARD)
  assert "is cut to max_length" in caplog.text and "10001 tokens" in caplog.text  # 10k bytes + EOS
  ids, mask = batch["input_ids"], batch["attention_mask"]
  eos = generator.tokenizer.eos_id
  assert mask[0].sum() == 1 and ids[0, 0] == eos  # empty text: just EOS
  assert mask[1].all() and ids[1, -1] == eos  # truncated to max_length, EOS kept
  assert mask[2].sum() > 20 and mask[3].sum() > 5 and mask[4].sum() > 5
  replacement = generator.tokenizer("\ufffd")["input_ids"][0, :3].tolist()  # U+FFFD's 3 bytes
  for row in (3, 4):  # invalid UTF-8 / lone surrogates become U+FFFD
    assert any(ids[row, i:i + 3].tolist() == replacement for i in range(MAX_LEN - 2))
  caplog.clear()
  with caplog.at_level(logging.WARNING):  # the same tokens with the lengths, and no warning
    tokens, lengths = generator.tokenizer.tokenize(AWKWARD)
  assert not caplog.text and lengths[:2] == [1, 10_001]
  assert [min(n, MAX_LEN) for n in lengths] == mask.sum(1).tolist()
  for key, value in batch.items():
    np.testing.assert_array_equal(tokens[key], value)

  # A long text keeps its first max_length - 1 tokens and EOS, as transformers truncates.
  text = "".join(f"word{i} " for i in range(200))
  hf = generator.tokenizer.hf(text, truncation=True, max_length=MAX_LEN)["input_ids"]
  assert len(hf) == MAX_LEN and hf[-1] == eos
  np.testing.assert_array_equal(generator.tokenizer(text)["input_ids"][0], hf)

  states = generator.encode(AWKWARD)
  assert states.shape == (len(AWKWARD), MAX_LEN, generator.config.d_model)
  assert states.dtype == np.float32 and np.isfinite(states).all()
  texts = generator.generate(AWKWARD, max_new_tokens=4)
  assert len(texts) == len(AWKWARD) and all(isinstance(t, str) for t in texts)


HOSTILE = ["  \t\n\u3000 ", ("a red circle " * 7693)[:100_000],
           "ctrl \x00\x07\x1b[31mred\x1b[0m\r\n\x7f\u202e\u200b end",
           "mixed: красный круг, دائرة حمراء, लाल वृत्त, 赤い円 🔴", "\ufeff\u200d\u2028\u2029"]


def test_empty_input_decoderless_config_wrong_seed_count_ignored_options(generator, caplog):
  assert generator.generate([]) == [] and generator.generate([], seed=[]) == []
  assert generator.encode([]).shape == (0, MAX_LEN, generator.config.d_model)
  no_rows = np.zeros((0, MAX_LEN), np.int32)  # generate() itself: a ZeroDivisionError (reshape)
  for search in ({}, {"num_beams": 2}, {"do_sample": True, "rng": jax.random.PRNGKey(0)}):
    out = generate(generator.params, generator.config, no_rows, max_new_tokens=2, **search)
    assert out.shape == (0, 2), search
  with pytest.raises(ValueError, match=r"seed must be one int or one per text \(3 texts\); got 2"):
    generator.generate(["a", "b", "c"], seed=[1, 2], do_sample=True)
  batch = generator.tokenizer(["a red circle", "a blue square"])
  ids, vocab = batch["input_ids"], generator.config.vocab_size
  for bad, match in ((ids[:, :0], r"length >= 1, got shape \(2, 0\)"),
                     (np.where(ids == ids[0, 0], vocab, ids), rf"\[0, vocab_size={vocab}\); got"),
                     (ids - 1000, rf"\[0, vocab_size={vocab}\); got")):
    with pytest.raises(ValueError, match=match):
      generate(generator.params, generator.config, bad, max_new_tokens=2)
  with pytest.raises(ValueError, match=r"attention_mask \(1, 32\) must match input_ids \(2, 32\)"):
    generate(generator.params, generator.config, ids, batch["attention_mask"][:1], max_new_tokens=2)
  encoder_only = dataclasses.replace(generator.config, num_decoder_layers=0)
  with pytest.raises(ValueError, match="no decoder layers .* it encodes but cannot generate"):
    generate(generator.params, encoder_only, batch["input_ids"], batch["attention_mask"],
             max_new_tokens=2)
  # Sampling options without sampling: named as ignored, and no program of their own.
  programs = importlib.import_module("llmimg_jax.text.generate")._generate
  with caplog.at_level(logging.WARNING):
    greedy = generator.generate(["a red circle"], max_new_tokens=3, temperature=0.5, top_k=4)
    compiled = programs._cache_size()
    assert generator.generate(["a red circle"], max_new_tokens=3) == greedy
  assert programs._cache_size() == compiled
  assert ("temperature=0.5, top_k=4 only apply when sampling (do_sample=True); ignored"
          in caplog.text)
  # No attention mask: every position counts, as an all-ones mask.
  model = T5ForConditionalGeneration(generator.config)
  ids, start = batch["input_ids"], np.zeros((2, 1), np.int32)
  np.testing.assert_array_equal(
      model.apply({"params": generator.params}, ids, None, start),
      model.apply({"params": generator.params}, ids, np.ones_like(ids), start))


def test_fractional_input_ids_are_refused_not_cut_to_other_tokens(generator):
  """Float input_ids such as 104.7 were cut to int32 (104.7 generated from token 104) without a
  word; they are refused, naming the argument and the fix. Whole-number floats are ids."""
  ids = generator.tokenizer(["a red circle"])["input_ids"]
  for bad in (ids + 0.7, np.where(ids == ids[0, 0], np.nan, ids)):
    with pytest.raises(ValueError, match=r"input_ids must be whole numbers \(token ids\); got "
                                         r"float64 values such as (\d+\.7|nan)\. Pass the "
                                         r"tokenizer's int ids"):
      generate(generator.params, generator.config, bad, max_new_tokens=2)
  assert ids.max() < 128  # where bfloat16 still holds halves: ml_dtypes' bf16 is no np.floating
  with pytest.raises(ValueError, match=r"input_ids must be whole numbers \(token ids\); got "
                                       r"bfloat16 values such as \d+\.5\."):
    generate(generator.params, generator.config, jnp.asarray(ids + 0.5, jnp.bfloat16),
             max_new_tokens=2)
  np.testing.assert_array_equal(
      generate(generator.params, generator.config, ids.astype(np.float32), max_new_tokens=2),
      generate(generator.params, generator.config, ids, max_new_tokens=2))


def test_attention_masks_other_than_0_and_1_are_refused(generator):
  """A float attention_mask of 0.5 was cut to int32 0 (that token masked out, where the encoder
  itself reads any nonzero as attended) and 2 taken, without a word; values other than 0 and 1
  are refused, naming the argument and the fix. Float and bool 0/1 masks are masks."""
  batch = generator.tokenizer(["a red circle", "a blue square on the left"])
  ids, mask = batch["input_ids"], batch["attention_mask"]
  for bad, dtype, value in ((mask * 0.5, "float64", r"0\.5"), (mask * 2, "int32", "2"),
                            (np.where(mask == 0, np.nan, mask), "float64", "nan")):
    with pytest.raises(ValueError, match=rf"^attention_mask must hold 0 \(padding\) or 1 \(a "
                                         rf"token\); got {dtype} values such as {value}\. Pass "
                                         r"the tokenizer's 'attention_mask'\.$"):
      generate(generator.params, generator.config, ids, bad, max_new_tokens=2)
  want = generate(generator.params, generator.config, ids, mask, max_new_tokens=2)
  for same in (mask.astype(np.float32), mask.astype(bool)):
    np.testing.assert_array_equal(
        generate(generator.params, generator.config, ids, same, max_new_tokens=2), want)


def test_hostile_texts_tokenize_quickly_and_encode(generator, caplog):
  """Whitespace-only, 100,000 characters, control characters, mixed scripts: no crash or hang.
  (Refusing empty prompts is sample.py's job; the encoder encodes whatever it gets.)"""
  start = time.perf_counter()
  with caplog.at_level(logging.WARNING):
    batch = generator.tokenizer(HOSTILE)  # as many texts as AWKWARD: the same jitted shapes
  assert time.perf_counter() - start < 10  # ~0.5 s; linear in the length
  assert "Text #2 of 5 ('a red circle a red circle a re...', 100001 tokens) is cut" in caplog.text
  mask = batch["attention_mask"]
  assert mask[0].sum() == len(HOSTILE[0].encode()) + 1 and mask[1].all()
  wide = load_tokenizer(None, 256)  # every byte survives: control characters and all scripts
  whole = [HOSTILE[0]] + HOSTILE[2:]  # whitespace at the ends too (decode stripped it)
  assert wide.decode(wide(whole)["input_ids"]) == whole
  states = generator.encode(HOSTILE)
  assert states.shape == (len(HOSTILE), MAX_LEN, generator.config.d_model)
  assert np.isfinite(states).all()
  texts = generator.generate(HOSTILE, max_new_tokens=4)
  assert len(texts) == len(HOSTILE) and all(isinstance(t, str) for t in texts)


def test_texts_past_the_tokenizers_model_max_length_get_no_indexing_error_warning(capfd, caplog):
  # A t5 tokenizer says model_max_length=512; transformers warned that longer texts 'will result
  # in indexing errors' (T5's positions are relative), even when max_length kept them whole.
  tok = TextTokenizer(transformers.ByT5Tokenizer(model_max_length=8), 64)
  batch = tok(["thirty bytes of text, more or less"])
  assert batch["attention_mask"].sum() == 35  # whole, EOS included
  assert "indexing errors" not in capfd.readouterr().err + caplog.text


def test_a_text_cut_to_max_length_is_named_with_what_to_raise(caplog):
  """sample.py's over-long prompt was 'text 0 had N tokens', with max_length=72 but not the
  prompt, nor which setting that is: a run's config.text.max_length, or load_tokenizer's (or
  TextGenerator.from_pretrained's) argument from Python. Counted from 1, as sample.py's prompts
  are ('Prompt #2 of 4'): 'Text 1' was the second."""
  tok = load_tokenizer(None, 8)
  with caplog.at_level(logging.WARNING):
    batch = tok(["a cat", "a red circle\nleft of a blue square", "seven b", b"bytes too long"])
  assert batch["attention_mask"].sum(axis=1).tolist() == [6, 8, 8, 8]
  assert [r.getMessage() for r in caplog.records] == [
      "Text #2 of 4 ('a red circle\\nleft of a blue sq...', 35 tokens) is cut to max_length=8 "
      "tokens (2 of 4 texts are): raise max_length to keep such texts whole, a run's "
      "config.text.max_length (train.py --config.text.max_length) or, from Python, the "
      "max_length of load_tokenizer or TextGenerator.from_pretrained."]
  caplog.clear()
  with caplog.at_level(logging.WARNING):  # one text: no number to give it
    tok("a red circle left of a blue square", fix="shorten it")
  assert [r.getMessage() for r in caplog.records] == [
      "The text ('a red circle left of a blue sq...', 35 tokens) is cut to max_length=8 tokens: "
      "shorten it."]


def test_tokenizer_rejects_non_text():
  tok = load_tokenizer(None, 8)
  with pytest.raises(TypeError, match="str or bytes"):
    tok([1, 2, 3])


def test_texts_from_any_iterable_are_tokenized(generator):
  """A generator expression of texts failed as "object of type 'generator' has no len()", in the
  tokenizer and so in TextGenerator.generate and encode; any iterable of texts is taken, and a
  non-iterable is named."""
  texts = ["a red circle", "a blue square"]
  want = generator.tokenizer(texts)
  for got in (generator.tokenizer(t for t in texts), generator.tokenizer(iter(texts)),
              generator.tokenizer(dict.fromkeys(texts))):
    assert {k: v.tolist() for k, v in got.items()} == {k: v.tolist() for k, v in want.items()}
  assert generator.generate((t for t in texts), max_new_tokens=2) == generator.generate(
      texts, max_new_tokens=2)
  assert generator.encode(t for t in texts).shape == (2, MAX_LEN, generator.config.d_model)
  with pytest.raises(TypeError, match=r"^Expected texts as one str or an iterable of str; got "
                                      r"int: 5\.$"):
    generator.tokenizer(5)


def test_decode_skips_ids_past_the_tokenizers_vocabulary():
  # A model's embedding may have more rows than its tokenizer has tokens (t5: 32128 vs 32100);
  # an untrained model can emit those ids. ByT5's tokenizer raises on them.
  tok = load_tokenizer(None, 16)  # ByT5: 384 tokens; ids 104, 105, 106 are "e", "f", "g"
  assert tok.decode(np.array([[104, 105, 390, 106, 1, 0], [500, 104, 1, 0, 0, 0]])) == ["efg", "e"]
  assert tok.vocab_size == 384 and tok.decode(np.array([[104, 384, 105, 383]])) == ["ef"]


EDGE_WHITESPACE = ["  leading", "trailing  ", " \n a red\t ", "a  red   circle", "\u3000x\u3000",
                   "\r\n", " "]


def test_decode_is_transformers_decode_whitespace_included(tmp_path):
  """decode stripped every text, so a text that begins or ends with whitespace (ByT5 keeps every
  byte; a sentencepiece model can emit bare '▁' pieces) differed from transformers' decode."""
  byt5 = load_tokenizer(None, 32)
  spiece = load_tokenizer(sentencepiece_tokenizer_dir(str(tmp_path / "spiece")), 32)
  assert type(spiece.hf).__name__ == "T5Tokenizer" and spiece.vocab_size == 30
  space = spiece.hf.convert_tokens_to_ids("\u2581")
  # As a model may generate them: '▁' pieces at the start and the end ('re', 'd' and 'a' between).
  generated = [[space, 7, 10, space, space, 1], [space, space, 4, 1, 0, 0]]
  for tok, rows in ((byt5, []), (spiece, generated)):
    ids = np.concatenate([tok(EDGE_WHITESPACE)["input_ids"],
                          np.array([r + [tok.pad_id] * (32 - len(r)) for r in rows],
                                   np.int32).reshape(-1, 32)])
    want = [tok.hf.decode(row, skip_special_tokens=True) for row in ids.tolist()]
    assert tok.decode(ids) == want
  assert byt5.decode(byt5(EDGE_WHITESPACE)["input_ids"]) == EDGE_WHITESPACE  # every byte back
  assert spiece.decode(np.array(generated)) == ["red  ", " a"]  # were 'red' and 'a'


def test_seeds_out_of_range_are_refused_by_the_generator(generator):
  """TextGenerator took any seed: 2**32 sampled as seed 0 did, -1 as 2**32 - 1, and one past
  int64 was an OverflowError from jax.random.PRNGKey; the CLI alone refused them."""
  for seed, named in ((2**32, "seed=4294967296"), (-1, "seed=-1"),
                      ([0, 2**64], f"seed[1]={2**64}")):
    with pytest.raises(ValueError, match=rf"^{re.escape(named)} must be in \[0, 2\*\*32\)\.$"):
      generator.generate(["a", "b"], max_new_tokens=2, seed=seed, do_sample=True)
  with pytest.raises(ValueError, match=r"^seed=-1 must be in \[0, 2\*\*32\)"):
    TextGenerator.from_pretrained(None, seed=-1)
  assert generator.generate(["a"], max_new_tokens=2, seed=2**32 - 1, do_sample=True)


def test_seeds_out_of_range_are_refused_by_the_offline_default():
  """load_pretrained(None, seed=...) initialised with any seed: 2**32 as seed 0 (PRNGKey keeps
  the low 32 bits), -1 as 2**32 - 1; from_pretrained checked it, load_pretrained did not."""
  tiny = T5Config.byt5_small_scratch(d_model=8, num_layers=1, num_heads=1, d_kv=8, d_ff=8)
  for seed, error in ((2**32, ValueError), (-1, ValueError), (2.5, TypeError)):
    with pytest.raises(error, match=rf"^seed={seed} (must be in \[0, 2\*\*32\)|is a float)"):
      load_pretrained(None, 8, seed=seed, config=tiny)


def test_checkpoint_without_vocabulary_is_refused(tmp_path):
  # model.save_pretrained() alone: transformers 5 would give a T5Tokenizer mapping every word to
  # <unk>; a ByT5 tokenizer needs no vocabulary file and still loads.
  transformers.T5Config(vocab_size=64, d_model=8, d_ff=8, num_layers=1, num_heads=1,
                        d_kv=8).save_pretrained(tmp_path / "t5")
  with pytest.raises(FileNotFoundError, match="No tokenizer vocabulary.*save_pretrained"):
    load_tokenizer(str(tmp_path / "t5"), 8)
  transformers.ByT5Tokenizer().save_pretrained(tmp_path / "byt5")
  ids = load_tokenizer(str(tmp_path / "byt5"), 8)(["ab"])["input_ids"]
  assert ids[0, :2].tolist() == [100, 101]


@pytest.mark.parametrize("dtype, why", [
    (np.float16, r"\('float32', 'bfloat16'\) \(T5's activations overflow float16's range: inf, "
                 r"then NaN\)\.$"),
    ("float64", r"\('float32', 'bfloat16'\)\.$"), ("int8", r"\('float32', 'bfloat16'\)\.$"),
    ("bf16", r"\('float32', 'bfloat16'\)\.$")])  # 'bf16': numpy's TypeError, "not understood"
def test_compute_dtypes_other_than_float32_and_bfloat16_are_refused(generator, dtype, why):
  """Only float16's message gives its overflow as the reason (float64's did too)."""
  with pytest.raises(ValueError, match="compute dtype .* not supported; use one of") as error:
    TextGenerator(generator.config, generator.params, generator.tokenizer, dtype)
  assert re.search(why, str(error.value)), str(error.value)
  with pytest.raises(ValueError, match="compute dtype .* not supported"):
    generate(generator.params, generator.config, [[5, 1]], max_new_tokens=2, dtype=dtype)


def test_no_pytorch_advice_without_torch():
  """torch is not a runtime dependency, yet every command printed transformers' "PyTorch was not
  found. Models won't be available ..." (its tokenizers, all we use, need no torch)."""
  script = ("import sys; sys.modules['torch'] = None\n"  # as after the README's quick start
            "from llmimg_jax.text import load_tokenizer\n"
            "import transformers\n"
            "assert not transformers.is_torch_available()\n"
            "print(load_tokenizer(None, 16)(['a red circle'])['input_ids'].tolist())\n")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["[[100,", "35,", "117,", "104,", "103,", "35,", "102,", "108,",
                                "117,", "102,", "111,", "104,", "1,", "0,", "0,", "0]]"]
  assert "PyTorch was not found" not in out.stderr, out.stderr
