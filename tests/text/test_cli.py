"""The `python -m llmimg_jax.text` CLI: texts generated and states encoded as transformers' do,
its sampling options reaching generate, one line per text, and bad models, options and
--encode_out files refused in one line (before the model loads where they can be)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from llmimg_jax.text import TextGenerator, load_tokenizer
from llmimg_jax.text.__main__ import main
from tests.text.utils import MAX_LEN

_ERROR = "python -m llmimg_jax.text: error: "  # as argparse's own errors begin


def _hf_reference(ckpt, texts: list[str], max_new_tokens: int):
  tok = load_tokenizer(ckpt.path, MAX_LEN)
  batch = tok(texts)
  ids, mask = torch.tensor(batch["input_ids"]).long(), torch.tensor(batch["attention_mask"])
  with torch.no_grad():
    out = ckpt.hf_model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=max_new_tokens)
    enc = ckpt.hf_model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
  return [tok.hf.decode(row, skip_special_tokens=True) for row in out[:, 1:].tolist()], enc.numpy()


def _refused(tmp_path, capsys, *flags: str) -> str:
  """main's stderr for --text x with these flags and a model that is not there: they must be
  refused (exit 2) before the model loads, whose 'not found' would be another message."""
  assert main(["--model", str(tmp_path / "nowhere"), "--text", "x", *flags]) == 2
  return capsys.readouterr().err


def test_cli_generates_and_encodes(relu_tied, tmp_path):
  texts = ["a red fox in the snow", "hi"]
  common = [sys.executable, "-m", "llmimg_jax.text", "--model", relu_tied.path,
            "--max_length", str(MAX_LEN)] + [a for t in texts for a in ("--text", t)]
  # Asked for without the extension that np.save adds; a name that is not UTF-8 printed under a
  # UTF-8 stdout was a UnicodeEncodeError after the file was saved (exit 2).
  npy = tmp_path / os.fsdecode(b"states_\xe9.npy")
  env = dict(os.environ, PYTHONIOENCODING="utf-8")
  procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
           for cmd in (common + ["--max_new_tokens", "10"],
                       common + ["--encode_out", str(npy)[:-len(".npy")]])]
  results = [p.communicate(timeout=120) for p in procs]
  for p, (out, err) in zip(procs, results):
    assert p.returncode == 0, err.decode(errors="replace")[-3000:]

  ref_texts, ref_states = _hf_reference(relu_tied, texts, 10)
  assert any(ref_texts), "reference generated only special tokens; comparison would be empty"
  assert results[0][0].decode("utf-8") == "".join(t + "\n" for t in ref_texts)

  states = np.load(npy)
  assert states.dtype == np.float32 and states.shape == (len(texts), MAX_LEN, 32)
  np.testing.assert_allclose(states, ref_states, atol=1e-4)
  assert str(npy) in results[1][0].decode(errors="surrogateescape")


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
  monkeypatch.setattr(TextGenerator, "generate_tokens", lambda self, batch, **kw: texts)
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


@pytest.mark.parametrize("flags, error", [
    (["--max_new_tokens", "0"], "--max_new_tokens=0 must be >= 1."),
    (["--num_beams", "-1"], "--num_beams=-1 must be >= 1."),
    (["--max_length", "1"], "--max_length=1 must be >= 2 (room for one token and EOS)."),
    (["--max_length", "0", "--encode_out", "s.npy"], "--max_length=0 must be >= 2"),
    (["--do_sample", "--temperature", "0"], "--temperature=0.0 must be from 1e-06 to 3.4e+38 (1: "
     "the model's own probabilities; lower is greedy decoding: drop --do_sample)."),
    (["--do_sample", "--temperature", "nan"], "--temperature=nan must be from 1e-06 to 3.4e+38"),
    # float32 logits / 1e-40 (0 in float32): inf and NaN, and 32 NUL characters printed
    (["--do_sample", "--temperature", "1e-40"], "--temperature=1e-40 must be from 1e-06 to"),
    # inf in float32: uniform draws (NaN logits for a token held back)
    (["--do_sample", "--temperature", "1e39"], "--temperature=1e+39 must be from 1e-06 to"),
    (["--max_new_tokens", "3000000000"], "--max_new_tokens=3000000000 must be < 2**31 (an int32 "
     "step count)."),  # a jit OverflowError traceback
    (["--max_length", "3000000000", "--encode_out", "s.npy"],  # the kernel's OOM kill
     "--max_length=3000000000 must be < 2**31 (int32 token positions)."),
    (["--do_sample", "--top_p", "0"], "--top_p=0.0 must be in (0, 1] (1: all tokens)."),
    (["--do_sample", "--top_k", "-1"], "--top_k=-1 must be >= 0 (0: all tokens).")])
def test_cli_out_of_range_options_are_refused_before_the_model_loads(flags, error, tmp_path,
                                                                      capsys):
  """They were refused by the tokenizer or generate() once the model had loaded (a hub download,
  for a name), naming the options without their flags ('Need max_new_tokens >= 1 and num_beams
  >= 1, got 0, 1.')."""
  assert _ERROR + error in _refused(tmp_path, capsys, *flags)


def test_cli_beam_sampling_is_refused_before_the_model_loads(monkeypatch, capsys):
  """It was refused by generate(), after the model load, in a message naming no fix."""
  from llmimg_jax.text.generator import TextGenerator
  monkeypatch.setattr(TextGenerator, "from_pretrained", None)
  assert main(["--model", "some/model", "--text", "x", "--do_sample", "--num_beams", "2"]) == 2
  assert ("Beam sampling (--do_sample with --num_beams > 1) is not supported; drop --num_beams to "
          "sample, or --do_sample for beam search.") in capsys.readouterr().err


def test_cli_text_that_is_not_utf8_is_refused_before_the_model_loads(tmp_path, capsys):
  """Latin-1 bytes from a shell reach Python as surrogates, which the tokenizer makes U+FFFD: a
  Latin-1 'café' was generated from (or encoded as) 'caf' and U+FFFD without a word, where
  sample.py refuses such a prompt. Named by its place from 1: '--text 1' (from 0) read like its
  value."""
  assert (_ERROR + "--text #2 of 2 is not valid UTF-8 text ('caf\\udce9'); set the terminal's "
          "encoding to UTF-8.") in _refused(tmp_path, capsys, "--text", "caf\udce9")
  assert main(["--model", str(tmp_path / "nowhere"), "--text", "caf\udce9"]) == 2
  assert capsys.readouterr().err == (_ERROR + "--text is not valid UTF-8 text ('caf\\udce9'); set "
                                     "the terminal's encoding to UTF-8.\n")


@pytest.mark.parametrize("encode", [False, True])
def test_cli_text_cut_to_max_length_names_the_flag(encode, relu_tied, tmp_path, caplog, capsys):
  """The tokenizer's advice named a run's config.text.max_length, load_tokenizer and
  TextGenerator.from_pretrained, where the CLI's own flag is --max_length."""
  out = ["--encode_out", str(tmp_path / "s.npy")] if encode else ["--max_new_tokens", "2"]
  with caplog.at_level(logging.WARNING):
    assert main(["--model", relu_tied.path, "--max_length", "8", "--text", "a cat",
                 "--text", "a red circle left of a blue square", *out]) == 0
  capsys.readouterr()
  [message] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert message == ("Text #2 of 2 ('a red circle left of a blue sq...', 35 tokens) is cut to "
                     "max_length=8 tokens: raise --max_length to keep such texts whole.")


@pytest.mark.parametrize("seed", ["-1", str(2**32), "99999999999999999999"])
def test_cli_seed_out_of_range_is_refused(seed, tmp_path, capsys):
  """A seed past int64 was an OverflowError traceback from jax.random.PRNGKey (sample.py and
  evaluate.py take [0, 2**32) too)."""
  assert f"--seed={seed} must be in [0, 2**32)" in _refused(tmp_path, capsys, "--seed", seed)


@pytest.mark.parametrize("encode", [False, True])
def test_cli_out_of_memory_is_one_line_naming_the_sizes(encode, relu_tied, tmp_path, capsys,
                                                        monkeypatch):
  """--max_length 100000000 ended in XLA's RESOURCE_EXHAUSTED traceback."""
  import jax

  def exhausted(*args, **kwargs):
    raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating "
                                     "320000053200006392 bytes.")

  monkeypatch.setattr(TextGenerator, "encode_tokens" if encode else "generate_tokens", exhausted)
  args = ["--model", relu_tied.path, "--text", "x"]
  args += ["--encode_out", str(tmp_path / "s.npy")] if encode else []
  assert main(args) == 2
  err = capsys.readouterr().err
  assert _ERROR + "out of memory (RESOURCE_EXHAUSTED" in err and "lower --max_length" in err, err
  assert ("--max_new_tokens" in err) != encode, err  # encoding generates no tokens
  assert not (tmp_path / "s.npy").exists()


def test_cli_unwritable_encode_out_is_refused_before_the_model_loads(tmp_path, capsys):
  (tmp_path / "a_file").write_text("")
  (tmp_path / "dir.npy").mkdir()
  for out in (tmp_path / "a_file" / "states", tmp_path / "dir.npy"):
    err = _refused(tmp_path, capsys, "--encode_out", str(out))
    assert f"--encode_out '{out}" in err and "not found" not in err, err


def test_cli_encode_out_where_no_file_can_be_made_is_refused_before_the_model_loads(tmp_path,
                                                                                    capsys):
  """--encode_out /proc/s.npy: /proc's mode allows writing, so os.access passed it as root, the
  model loaded and the texts were encoded before the save failed. A file is made and removed in
  the folder first; the error names the flag, the folder, why, and the fix."""
  err = _refused(tmp_path, capsys, "--encode_out", "/proc/llmimg_nope.npy")
  assert err.startswith(_ERROR + "--encode_out '/proc/llmimg_nope.npy': cannot write into /proc ("
                        ) and err.endswith("); name a .npy file in a folder you can write.\n"), err


def test_cli_encode_out_link_is_checked_where_the_states_are_written(relu_tied, tmp_path,
                                                                     capsys):
  """The states are written through an --encode_out link to its target, but the check made and
  tested the link's own folder: a link into /proc passed it, and one into a missing folder failed
  to save, each after the model loaded and the texts were encoded. The target's folder is made and
  tested before the model loads."""
  to_proc, to_missing = tmp_path / "proc.npy", tmp_path / "new.npy"
  to_proc.symlink_to("/proc/llmimg_nope.npy")
  to_missing.symlink_to(tmp_path / "new" / "states.npy")
  err = _refused(tmp_path, capsys, "--encode_out", str(to_proc))
  assert err.startswith(_ERROR + f"--encode_out '{to_proc}': cannot write into /proc ("), err
  assert main(["--model", relu_tied.path, "--text", "x", "--max_length", str(MAX_LEN),
               "--encode_out", str(to_missing)]) == 0  # nothing to overwrite: no --overwrite
  assert np.load(tmp_path / "new" / "states.npy").shape == (1, MAX_LEN, 32)
  assert to_missing.is_symlink()


def test_cli_encode_out_link_is_refused_only_if_its_target_exists(relu_tied, tmp_path, capsys):
  """A link whose target did not exist yet was refused as existing unless --overwrite, though
  nothing would be overwritten (evaluate.py's --out writes through such a link). Its target is
  what must not exist: a link to an existing file is refused, naming both, unless --overwrite."""
  target, link = tmp_path / "states.npy", tmp_path / "link.npy"
  np.save(target, np.arange(3))
  link.symlink_to(target)
  err = _refused(tmp_path, capsys, "--encode_out", str(link))
  assert f"--encode_out '{link}' (a link to {target}) exists" in err, err
  assert "--overwrite" in err and "not found" not in err, err
  assert main(["--model", relu_tied.path, "--text", "x", "--max_length", str(MAX_LEN),
               "--encode_out", str(link), "--overwrite"]) == 0
  assert np.load(target).shape == (1, MAX_LEN, 32) and link.is_symlink()


def test_cli_encode_out_link_to_itself_is_named_as_a_loop(tmp_path, capsys):
  """`ln -s s.npy s.npy` was refused as '(a link to ...) exists', and with --overwrite the model
  loaded and the states replaced the link: a loop is named before the model loads."""
  loop = tmp_path / "s.npy"
  loop.symlink_to(loop.name)
  for overwrite in ([], ["--overwrite"]):
    assert _refused(tmp_path, capsys, "--encode_out", str(loop), *overwrite) == (
        _ERROR + f"--encode_out {str(loop)!r} leads to itself through a link (a loop); name a .npy "
        "file.\n")
  assert loop.is_symlink()


def test_cli_encode_out_under_home_is_expanded_as_every_path_flag_is(tmp_path, capsys,
                                                                     monkeypatch):
  """--encode_out=~/s.npy (no shell expands a ~ after '=') made a folder named '~' in the current
  one, where evaluate.py's --out and prepare's --preview expand it: here ~/s.npy exists."""
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.chdir(tmp_path)
  (tmp_path / "home").mkdir()
  np.save(tmp_path / "home" / "s.npy", np.arange(3))
  err = _refused(tmp_path, capsys, "--encode_out=~/s.npy")
  assert err.startswith(_ERROR + f"--encode_out {str(tmp_path / 'home' / 's.npy')!r} exists"), err
  assert _refused(tmp_path, capsys, "--encode_out=~/s/").startswith(
      _ERROR + "--encode_out '~/s/' names no file")
  assert os.listdir(tmp_path) == ["home"]


def test_cli_existing_encode_out_is_refused_unless_overwrite(relu_tied, tmp_path, capsys):
  """--encode_out replaced an existing .npy without a word (evaluate.py's --out and
  --write_stats refuse one unless told): refused before the model loads, replaced with
  --overwrite, and written through a temporary file (a crash mid-write keeps the old one)."""
  npy = tmp_path / "states.npy"
  np.save(npy, np.arange(3))
  for out in (npy, tmp_path / "states"):  # np.save's suffix added
    err = _refused(tmp_path, capsys, "--encode_out", str(out))
    assert f"--encode_out '{npy}' exists" in err and "--overwrite" in err, err
    assert "not found" not in err
  np.testing.assert_array_equal(np.load(npy), np.arange(3))
  assert main(["--model", relu_tied.path, "--text", "x", "--max_length", str(MAX_LEN),
               "--encode_out", str(npy), "--overwrite"]) == 0
  assert np.load(npy).shape == (1, MAX_LEN, 32)
  assert sorted(os.listdir(tmp_path)) == ["states.npy"]  # no temporary file left
  assert "--overwrite only applies to --encode_out" in _refused(tmp_path, capsys, "--overwrite")


def test_cli_encode_out_naming_no_file_is_refused(tmp_path, capsys, monkeypatch):
  """--encode_out '' (an unset variable) generated text instead and exited 0; ' ' and 'DIR/'
  saved ' .npy' and 'DIR/.npy'; an existing DIR saved DIR.npy beside it."""
  monkeypatch.chdir(tmp_path)
  (tmp_path / "states").mkdir()
  for out in ("", " ", "states/", "states", str(tmp_path / "states")):
    err = _refused(tmp_path, capsys, "--encode_out", out)
    assert f"--encode_out {out!r} names no file" in err and "not found" not in err, err
  assert sorted(os.listdir(tmp_path)) == ["states"] and not os.listdir(tmp_path / "states")


def test_cli_generation_options_with_encode_out_are_refused(tmp_path, capsys):
  """--encode_out saved the states and ignored --temperature, --max_new_tokens etc. silently."""
  missing_model = str(tmp_path / "nowhere")  # refused before the model loads
  common = ["--model", missing_model, "--text", "x", "--encode_out", str(tmp_path / "s.npy")]
  assert main(common + ["--temperature", "0.5", "--max_new_tokens", "8", "--do_sample",
                        "--num_beams", "1", "--top_p", "1.0"]) == 2
  err = capsys.readouterr().err
  assert err == (_ERROR + "--max_new_tokens, --do_sample, --temperature only apply to generation, "
                 "not to --encode_out (which saves encoder states); drop them or drop "
                 "--encode_out.\n"), err
  # Options left at their defaults, even when given, are no reason to refuse.
  assert main(common + ["--num_beams", "1", "--top_k", "50", "--seed", "3", "--bf16"]) == 2
  err = capsys.readouterr().err
  assert "to generation" not in err and "not found" in err, err
  assert main(common + ["--top_p", "0.5"]) == 2  # one option: "applies", "it"
  assert capsys.readouterr().err == (
      _ERROR + "--top_p only applies to generation, not to --encode_out (which saves encoder "
      "states); drop it or drop --encode_out.\n")
  assert not (tmp_path / "s.npy").exists()


def test_cli_sampling_options_without_do_sample_are_refused(tmp_path, capsys):
  """--temperature, --top_k and --top_p without --do_sample only logged that they were ignored."""
  common = ["--model", str(tmp_path / "nowhere"), "--text", "x"]  # refused before the model loads
  assert main(common + ["--temperature", "0.5", "--top_k", "4", "--top_p", "1.0"]) == 2
  err = capsys.readouterr().err
  assert err == (_ERROR + "--temperature, --top_k only apply when sampling; pass --do_sample, or "
                 "drop them for greedy or beam-search generation.\n"), err
  # With --do_sample, or at their defaults, they are no reason to refuse.
  for extra in (["--do_sample", "--temperature", "0.5"], ["--top_k", "50", "--num_beams", "2"]):
    assert main(common + extra) == 2
    err = capsys.readouterr().err
    assert "when sampling" not in err and "not found" in err, err
  assert main(common + ["--top_k", "4"]) == 2  # one option: "applies", "it"
  assert capsys.readouterr().err == (
      _ERROR + "--top_k only applies when sampling; pass --do_sample, or drop it for greedy or "
      "beam-search generation.\n")


@pytest.mark.parametrize("args, error", [
    (["--txt", "hi"], "unrecognized arguments: --txt hi"),
    (["--num_beams", "2", "--txt", "hi", "--bogus"], "unrecognized arguments: --txt hi --bogus"),
    (["--num_beams", "2"], "the following arguments are required: --text"),
    # A prefix of an option was read as that option: --tex as --text.
    (["--tex", "hi"], "unrecognized arguments: --tex hi")])
def test_a_misspelt_flag_is_named_before_the_text_it_left_out(args, error, capsys):
  # `--txt hi` said only "the following arguments are required: --text", as if the misspelt
  # flag were not there (argparse checks the required flags before the unknown ones).
  with pytest.raises(SystemExit) as exited:
    main(args)
  assert exited.value.code == 2
  assert capsys.readouterr().err.splitlines()[-1] == _ERROR + error


def test_texts_to_an_unwritable_stdout_exit_1_with_one_warning(relu_tied):
  """The generated texts (the CLI's output) to a full disk were an OSError traceback."""
  cmd = [sys.executable, "-m", "llmimg_jax.text", "--model", relu_tied.path, "--max_length",
         str(MAX_LEN), "--max_new_tokens", "6", "--text", "hi"]
  with open("/dev/full", "wb") as full:
    proc = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert proc.stderr.endswith("python -m llmimg_jax.text: warning: could not write to stdout (No "
                              "space left on device); the rest of its output is dropped.\n")
