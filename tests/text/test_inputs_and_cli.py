"""Awkward text inputs, the TextGenerator wrapper and the `python -m llmimg_jax.text` CLI."""
from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import transformers

from llmimg_jax.text import (T5ForConditionalGeneration, TextGenerator, TextTokenizer, generate,
                             load_tokenizer)
from llmimg_jax.text.__main__ import main
from tests.text.utils import sentencepiece_tokenizer_dir

MAX_LEN = 32
AWKWARD = ["", "x" * 10_000, "日本語のテキストと絵文字 🦊🎨👩‍👩‍👧", b"\xff\xfe invalid \xc3\x28 utf-8",
           "lone surrogate \udcff here"]


@pytest.fixture(scope="module")
def generator(relu_tied):
  return TextGenerator.from_pretrained(relu_tied.path, max_length=MAX_LEN)


def test_awkward_texts_encode_and_generate(generator, caplog):
  with caplog.at_level(logging.WARNING):
    batch = generator.tokenizer(AWKWARD)
  assert "truncated" in caplog.text and "10001 tokens" in caplog.text  # 10k bytes + EOS
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


def test_hostile_texts_tokenize_quickly_and_encode(generator, caplog):
  """Whitespace-only, 100,000 characters, control characters, mixed scripts: no crash or hang.
  (Refusing empty prompts is sample.py's job; the encoder encodes whatever it gets.)"""
  start = time.perf_counter()
  with caplog.at_level(logging.WARNING):
    batch = generator.tokenizer(HOSTILE)  # as many texts as AWKWARD: the same jitted shapes
  assert time.perf_counter() - start < 10  # ~0.5 s; linear in the length
  assert "text 1 had 100001 tokens" in caplog.text
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


def test_tokenizer_rejects_non_text():
  tok = load_tokenizer(None, 8)
  with pytest.raises(TypeError, match="str or bytes"):
    tok([1, 2, 3])


def _hf_reference(ckpt, texts: list[str], max_new_tokens: int):
  tok = load_tokenizer(ckpt.path, MAX_LEN)
  batch = tok(texts)
  ids, mask = torch.tensor(batch["input_ids"]).long(), torch.tensor(batch["attention_mask"])
  with torch.no_grad():
    out = ckpt.hf_model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=max_new_tokens)
    enc = ckpt.hf_model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
  return [tok.hf.decode(row, skip_special_tokens=True) for row in out[:, 1:].tolist()], enc.numpy()


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


def test_cli_generates_and_encodes(relu_tied, tmp_path):
  texts = ["a red fox in the snow", "hi"]
  common = [sys.executable, "-m", "llmimg_jax.text", "--model", relu_tied.path,
            "--max_length", str(MAX_LEN)] + [a for t in texts for a in ("--text", t)]
  npy = tmp_path / "states.npy"  # asked for without the extension that np.save adds
  env = dict(os.environ, PYTHONIOENCODING="utf-8")
  procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
           for cmd in (common + ["--max_new_tokens", "10"],
                       common + ["--encode_out", str(tmp_path / "states")])]
  results = [p.communicate(timeout=120) for p in procs]
  for p, (out, err) in zip(procs, results):
    assert p.returncode == 0, err.decode(errors="replace")[-3000:]

  ref_texts, ref_states = _hf_reference(relu_tied, texts, 10)
  assert any(ref_texts), "reference generated only special tokens; comparison would be empty"
  assert results[0][0].decode("utf-8") == "".join(t + "\n" for t in ref_texts)

  states = np.load(npy)
  assert states.dtype == np.float32 and states.shape == (len(texts), MAX_LEN, 32)
  np.testing.assert_allclose(states, ref_states, atol=1e-4)
  assert str(npy) in results[1][0].decode()


def test_cli_sampling_options_reach_generate(generator, relu_tied, capsys):
  texts = ["a red fox in the snow", "hi"]
  common = ["--model", relu_tied.path, "--max_length", str(MAX_LEN), "--max_new_tokens", "8",
            "--do_sample", "--temperature", "1.7", "--top_k", "20", "--top_p", "0.9"]
  common += [a for t in texts for a in ("--text", t)]
  printed = {}
  for seed in (3, 4):
    assert main(common + ["--seed", str(seed)]) == 0
    printed[seed] = capsys.readouterr().out
    want = generator.generate(texts, max_new_tokens=8, seed=seed, do_sample=True,
                              temperature=1.7, top_k=20, top_p=0.9)
    assert printed[seed] == "".join(t + "\n" for t in want)
  assert printed[3] != printed[4]


def test_cli_prints_one_line_per_text_whatever_it_holds(relu_tied, capsys, monkeypatch):
  """A generated line break split a text over two lines: line i of the output was no longer the
  text of --text i."""
  texts = ["two\nlines", "crlf\r\nand\u2028separator\x85", "back\\slash \\n", "tab\tand 日本語"]
  monkeypatch.setattr(TextGenerator, "generate", lambda self, inputs, **kw: texts)
  assert main(["--model", relu_tied.path] + [a for _ in texts for a in ("--text", "x")]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines == ["two\\nlines", "crlf\\r\\nand\\u2028separator\\x85", "back\\\\slash \\\\n",
                   "tab\tand 日本語"]
  unescaped = [line.encode("latin-1", "backslashreplace").decode("unicode_escape")
               for line in lines]
  assert unescaped == texts  # as the README says


def test_cli_bad_model_path(tmp_path, capsys):
  missing = str(tmp_path / "nowhere")
  assert main(["--model", missing, "--text", "x"]) == 2
  err = capsys.readouterr().err
  assert missing in err and "not found" in err


@pytest.mark.parametrize("model", ["", " "])
def test_cli_empty_model_path_is_named_not_asked_of_the_hub(model, capsys, monkeypatch):
  # --model "$UNSET": the hub was asked for '' and its 'Repo id must use alphanumeric chars' shown.
  import huggingface_hub
  monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **kw: pytest.fail("hub"))
  assert main(["--model", model, "--text", "x"]) == 2
  err = capsys.readouterr().err
  assert f"T5 checkpoint {model!r} is empty" in err and "offline default" in err


def test_cli_bad_generation_options(relu_tied, capsys):
  common = ["--model", relu_tied.path, "--text", "x"]
  assert main(common + ["--max_new_tokens", "0"]) == 2
  assert "max_new_tokens >= 1" in capsys.readouterr().err
  assert main(common + ["--do_sample", "--num_beams", "2"]) == 2
  assert "Beam sampling" in capsys.readouterr().err


def test_cli_beam_sampling_is_refused_before_the_model_loads(monkeypatch, capsys):
  """It was refused by generate(), after the model load, in a message naming no fix."""
  from llmimg_jax.text.generator import TextGenerator
  monkeypatch.setattr(TextGenerator, "from_pretrained", None)
  assert main(["--model", "some/model", "--text", "x", "--do_sample", "--num_beams", "2"]) == 2
  assert ("Beam sampling (--do_sample with --num_beams > 1) is not supported; drop --num_beams to "
          "sample, or --do_sample for beam search.") in capsys.readouterr().err


def test_cli_nan_temperature_is_refused(relu_tied, capsys):
  """--temperature nan passed the `temperature <= 0` check: every logit NaN, an empty text and
  exit status 0."""
  assert main(["--model", relu_tied.path, "--text", "x", "--do_sample", "--temperature",
               "nan"]) == 2
  assert "Sampling needs temperature > 0" in capsys.readouterr().err


@pytest.mark.parametrize("seed", ["-1", str(2**32), "99999999999999999999"])
def test_cli_seed_out_of_range_is_refused(seed, tmp_path, capsys):
  """A seed past int64 was an OverflowError traceback from jax.random.PRNGKey (sample.py and
  evaluate.py take [0, 2**32) too)."""
  missing_model = str(tmp_path / "nowhere")  # checked before the model loads
  assert main(["--model", missing_model, "--text", "x", "--seed", seed]) == 2
  assert f"--seed={seed} must be in [0, 2**32)" in capsys.readouterr().err


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


@pytest.mark.parametrize("encode", [False, True])
def test_cli_out_of_memory_is_one_line_naming_the_sizes(encode, relu_tied, tmp_path, capsys,
                                                        monkeypatch):
  """--max_length 100000000 ended in XLA's RESOURCE_EXHAUSTED traceback."""
  import jax

  def exhausted(*args, **kwargs):
    raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating "
                                     "320000053200006392 bytes.")

  monkeypatch.setattr(TextGenerator, "encode" if encode else "generate", exhausted)
  args = ["--model", relu_tied.path, "--text", "x"]
  args += ["--encode_out", str(tmp_path / "s.npy")] if encode else []
  assert main(args) == 2
  err = capsys.readouterr().err
  assert "error: out of memory (RESOURCE_EXHAUSTED" in err and "lower --max_length" in err, err
  assert ("--max_new_tokens" in err) != encode, err  # encoding generates no tokens
  assert not (tmp_path / "s.npy").exists()


def test_checkpoint_without_vocabulary_is_refused(tmp_path):
  # model.save_pretrained() alone: transformers 5 would give a T5Tokenizer mapping every word to
  # <unk>; a ByT5 tokenizer needs no vocabulary file and still loads.
  transformers.T5Config(vocab_size=64, d_model=8, d_ff=8, num_layers=1, num_heads=1,
                        d_kv=8).save_pretrained(tmp_path / "t5")
  with pytest.raises(FileNotFoundError, match="No tokenizer vocabulary.*save_pretrained"):
    load_tokenizer(str(tmp_path / "t5"), 8)
  transformers.ByT5Tokenizer().save_pretrained(tmp_path / "byt5")
  assert load_tokenizer(str(tmp_path / "byt5"), 8)(["ab"])["input_ids"][0, :2].tolist() == [100, 101]


def test_cli_unwritable_encode_out_is_refused_before_the_model_loads(tmp_path, capsys):
  (tmp_path / "a_file").write_text("")
  (tmp_path / "dir.npy").mkdir()
  missing_model = str(tmp_path / "nowhere")  # loading it would fail with another message
  for out in (tmp_path / "a_file" / "states", tmp_path / "dir.npy"):
    assert main(["--model", missing_model, "--text", "x", "--encode_out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--encode_out {out}" in err and "not found" not in err, err


def test_cli_existing_encode_out_is_refused_unless_overwrite(relu_tied, tmp_path, capsys):
  """--encode_out replaced an existing .npy without a word (evaluate.py's --out and
  --write_stats refuse one unless told): refused before the model loads, replaced with
  --overwrite, and written through a temporary file (a crash mid-write keeps the old one)."""
  npy = tmp_path / "states.npy"
  np.save(npy, np.arange(3))
  missing_model = str(tmp_path / "nowhere")  # loading it would fail with another message
  for out in (npy, tmp_path / "states"):  # np.save's suffix added
    assert main(["--model", missing_model, "--text", "x", "--encode_out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--encode_out {out}: {npy} exists" in err and "--overwrite" in err, err
    assert "not found" not in err
  np.testing.assert_array_equal(np.load(npy), np.arange(3))
  assert main(["--model", relu_tied.path, "--text", "x", "--max_length", str(MAX_LEN),
               "--encode_out", str(npy), "--overwrite"]) == 0
  assert np.load(npy).shape == (1, MAX_LEN, 32)
  assert sorted(os.listdir(tmp_path)) == ["states.npy"]  # no temporary file left
  assert main(["--model", missing_model, "--text", "x", "--overwrite"]) == 2
  assert "--overwrite only applies to --encode_out" in capsys.readouterr().err


def test_cli_encode_out_naming_no_file_is_refused(tmp_path, capsys, monkeypatch):
  """--encode_out '' (an unset variable) generated text instead and exited 0; ' ' and 'DIR/'
  saved ' .npy' and 'DIR/.npy'; an existing DIR saved DIR.npy beside it."""
  monkeypatch.chdir(tmp_path)
  (tmp_path / "states").mkdir()
  missing_model = str(tmp_path / "nowhere")  # loading it would fail with another message
  for out in ("", " ", "states/", "states", str(tmp_path / "states")):
    assert main(["--model", missing_model, "--text", "x", "--encode_out", out]) == 2
    err = capsys.readouterr().err
    assert f"--encode_out {out}: {out!r} names no file" in err and "not found" not in err, err
  assert sorted(os.listdir(tmp_path)) == ["states"] and not os.listdir(tmp_path / "states")


def test_cli_generation_options_with_encode_out_are_refused(tmp_path, capsys):
  """--encode_out saved the states and ignored --temperature, --max_new_tokens etc. silently."""
  missing_model = str(tmp_path / "nowhere")  # refused before the model loads
  common = ["--model", missing_model, "--text", "x", "--encode_out", str(tmp_path / "s.npy")]
  assert main(common + ["--temperature", "0.5", "--max_new_tokens", "8", "--do_sample",
                        "--num_beams", "1", "--top_p", "1.0"]) == 2
  err = capsys.readouterr().err
  assert err == ("error: --max_new_tokens, --do_sample, --temperature only apply to generation, "
                 "not to --encode_out (which saves encoder states); drop them or drop "
                 "--encode_out.\n"), err
  # Options left at their defaults, even when given, are no reason to refuse.
  assert main(common + ["--num_beams", "1", "--top_k", "50", "--seed", "3", "--bf16"]) == 2
  err = capsys.readouterr().err
  assert "to generation" not in err and "not found" in err, err
  assert main(common + ["--top_p", "0.5"]) == 2  # one option: "applies", "it"
  assert capsys.readouterr().err == (
      "error: --top_p only applies to generation, not to --encode_out (which saves encoder "
      "states); drop it or drop --encode_out.\n")
  assert not (tmp_path / "s.npy").exists()


def test_cli_sampling_options_without_do_sample_are_refused(tmp_path, capsys):
  """--temperature, --top_k and --top_p without --do_sample only logged that they were ignored."""
  common = ["--model", str(tmp_path / "nowhere"), "--text", "x"]  # refused before the model loads
  assert main(common + ["--temperature", "0.5", "--top_k", "4", "--top_p", "1.0"]) == 2
  err = capsys.readouterr().err
  assert err == ("error: --temperature, --top_k only apply when sampling; pass --do_sample, or "
                 "drop them for greedy or beam-search generation.\n"), err
  # With --do_sample, or at their defaults, they are no reason to refuse.
  for extra in (["--do_sample", "--temperature", "0.5"], ["--top_k", "50", "--num_beams", "2"]):
    assert main(common + extra) == 2
    err = capsys.readouterr().err
    assert "when sampling" not in err and "not found" in err, err
  assert main(common + ["--top_k", "4"]) == 2  # one option: "applies", "it"
  assert capsys.readouterr().err == (
      "error: --top_k only applies when sampling; pass --do_sample, or drop it for greedy or "
      "beam-search generation.\n")


@pytest.mark.parametrize("dtype", [np.float16, "float64", "int8"])
def test_compute_dtypes_other_than_float32_and_bfloat16_are_refused(generator, dtype):
  with pytest.raises(ValueError, match="compute dtype .* not supported; use one of"):
    TextGenerator(generator.config, generator.params, generator.tokenizer, dtype)
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
