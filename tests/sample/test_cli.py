"""sample.py in subprocesses: a 1-device process reproduces the 8-device in-process samples;
bad inputs exit non-zero with one clear line."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.sample.utils import one_device_env

SCRIPT = str(Path(__file__).parents[2] / "sample.py")
PROMPTS = ["a red circle", "生成一张美丽的海滩风景图片", "🐱🌊 a cat by the sea 🌅",
           ("a tiny yellow star " * 12).strip()]


def _run(*args: str, timeout: int = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, SCRIPT, *args], env=one_device_env(), timeout=timeout,
                        capture_output=True, text=True, cwd=cwd)


def test_one_device_process_matches_in_process_samples(run, sampler, tmp_path):
  out = tmp_path / "out"
  prompts_file = tmp_path / "prompts.txt"
  prompts_file.write_text("\n".join(PROMPTS[2:]) + "\n\n", encoding="utf-8")
  proc = _run("--workdir", str(run.workdir), "--out", str(out), "--prompt", PROMPTS[0],
              "--prompt", PROMPTS[1], "--prompts_file", str(prompts_file), "--num_per_prompt",
              "3", "--seed", "7", "--truncation", "0.88", "--batch_size", "4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "on 1 local device(s)" in proc.stderr and "images/s" in proc.stdout
  assert "is cut to max_length=32 tokens" in proc.stderr  # the long prompt, with a warning
  records = _records(out, 12)
  assert [r["prompt"] for r in records] == [p for p in PROMPTS for _ in range(3)]
  assert {(r["seed"], r["step"], r["truncation"], r["caption"]) for r in records} == {
      (7, 2, 0.88, None)}
  # The same prompts and seed on this process's 8 devices, another batch size: the same images
  # up to rounding (XLA's CPU kernels for other per-device batches round a few floats apart).
  _assert_same_images(out, records, sampler(PROMPTS, seed=7, num_per_prompt=3, truncation=0.88))
  # --overwrite into the same --out: only the new samples remain, none of the earlier PNGs. The
  # last line names a relative --out in full, as train.py's log names its paths
  # (output_files.in_full).
  (tmp_path / "code").mkdir()
  proc = _run("--workdir", str(run.workdir), "--out", "../out", "--prompt", PROMPTS[0],
              "--overwrite", "--num_per_prompt", "1", "--seed", "9", cwd=tmp_path / "code")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.endswith(f" -> {out}\n"), proc.stdout
  assert [(r["file"], r["prompt"], r["seed"]) for r in _records(out, 1)] == [
      ("p0000_s000.png", PROMPTS[0], 9)]


def test_expansion_end_to_end_records_and_uses_the_captions(run, sampler, expander_dir, tmp_path):
  out = tmp_path / "out"
  proc = _run("--workdir", str(run.workdir), "--out", str(out), "--prompt", "a red circle",
              "--prompt", "🐱 a cat", "--num_per_prompt", "2", "--step", "1", "--expand_with",
              Path(expander_dir).name, "--expand_template", "Caption: {prompt}",
              "--expand_num_beams", "2", "--expand_max_new_tokens", "10",
              cwd=Path(expander_dir).parent)
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = _records(out, 4)
  assert [r["prompt"] for r in records] == ["a red circle"] * 2 + ["🐱 a cat"] * 2
  assert {r["step"] for r in records} == {1}
  captions = [records[0]["caption"], records[2]["caption"]]
  assert all(captions) and records[1]["caption"] == captions[0]
  assert captions[0] != "a red circle" and captions[1] != "🐱 a cat"  # expanded, not the prompts
  assert "Expanded 'a red circle' -> " in proc.stderr
  # What expanded them, to redo it: the model (in full, not as named) and its settings.
  assert all(r["expander"] == {"model": str(expander_dir), "template": "Caption: {prompt}",
                               "max_length": 64, "max_new_tokens": 10, "num_beams": 2,
                               "do_sample": False} for r in records), records[0]
  # The recorded captions, not the prompts, conditioned the step-1 generator.
  step1 = type(sampler).from_workdir(run.workdir, step=1, batch_size=8)
  _assert_same_images(out, records, step1(captions, seed=0, num_per_prompt=2))


def _records(out: Path, count: int) -> list[dict]:
  records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
  assert len(records) == count == len(list(out.glob("p*_s*.png")))
  assert all((out / r["file"]).is_file() for r in records)
  assert (out / "grid.png").stat().st_size > 0
  return records


def _assert_same_images(out: Path, records: list[dict], expected: np.ndarray) -> None:
  images = np.stack([np.asarray(Image.open(out / r["file"])) for r in records])
  assert images.shape == expected.shape
  diff = np.abs(images.astype(np.int16) - expected.astype(np.int16))
  assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3, (diff.max(), np.mean(diff > 0))


HOSTILE = [("a red circle " * 7693)[:100_000],  # 100,000 characters
           "ctrl \x07\x1b[31mred\x1b[0m\t\x7f\u202e\u200b\ufeff end",  # control/format chars
           "mixed: красный круг, دائرة حمراء, लाल वृत्त, 赤い円 🔴",  # scripts and directions
           "\u00a0non-breaking\u3000ideographic space\u2028line separator"]


def test_hostile_prompts_are_sampled_and_recorded_verbatim(run, tmp_path):
  out = tmp_path / "out"
  proc = _run("--workdir", str(run.workdir), "--out", str(out), "--num_per_prompt", "1",
              *[a for p in HOSTILE for a in ("--prompt", p)], timeout=240)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # Truncated to the run's max_length, with a warning that names the prompt and the fix.
  assert ("Text #1 of 4 ('a red circle a red circle a re...', 100001 tokens) is cut to "
          "max_length=32 tokens (4 of 4 texts are): the run's text encoder was trained on "
          "config.text.max_length=32 tokens and reads no more: shorten such prompts to keep them "
          "whole.") in proc.stderr
  records = _records(out, len(HOSTILE))
  assert [r["prompt"] for r in records] == HOSTILE


_NO_USER = ("{} '~no_such_user_llmimg/{}': ~no_such_user_llmimg is no user's home directory (no "
            "user 'no_such_user_llmimg' here); write the path out in full, or ~/ for your own "
            "home.")


@pytest.mark.parametrize("case", ["empty_prompt", "whitespace_prompt", "empty_file", "no_prompts",
                                  "no_checkpoint", "corrupt_checkpoint", "bad_template",
                                  "out_is_a_file", "out_has_samples", "bad_seed",
                                  "bad_expand_sampling", "beams_and_sampling", "bad_batch_size",
                                  "no_checkpoint_and_an_expander", "non_utf8_prompt", "empty_out",
                                  "expand_options_without_a_model", "empty_expand_with",
                                  "expand_sampling_options_without_sampling",
                                  "one_expand_option_without_a_model", "workdir_of_no_user",
                                  "out_of_no_user", "prompts_file_of_no_user",
                                  "out_is_a_dangling_link", "out_under_a_dangling_link",
                                  "output_linked_into_a_missing_folder"])
def test_bad_input_exits_with_one_clear_error(case, run, tmp_path):
  empty_file = tmp_path / "empty.txt"
  empty_file.write_text("\n   \n")
  (tmp_path / "fresh" / "checkpoints").mkdir(parents=True)  # a run that has not saved yet
  corrupt = tmp_path / "corrupt"
  if case == "corrupt_checkpoint":  # the latest step's array data deleted
    shutil.copytree(run.workdir, corrupt)
    shutil.rmtree(corrupt / "checkpoints" / "2" / "state" / "d")
  fresh = tmp_path / "fresh" / "checkpoints"
  (tmp_path / "link").symlink_to(tmp_path / "unmounted")  # e.g. a disk that is not mounted
  linked = tmp_path / "linked"  # its samples.jsonl kept on that disk
  linked.mkdir()
  (linked / "samples.jsonl").symlink_to(tmp_path / "unmounted" / "samples.jsonl")
  old_out = tmp_path / "old"
  old_out.mkdir()
  (old_out / "p0000_s000.png").write_bytes(b"an earlier run's image")
  args, message = {  # message: literal text, except for the corrupt case's alternatives
      "empty_prompt": (["--prompt", "a cat", "--prompt", ""], "Prompt #2 of 2 is empty"),
      "whitespace_prompt": (["--prompt", "a cat", "--prompt", " \t\u3000\u00a0 "],
                            "Prompt #2 of 2 is empty"),
      "empty_file": (["--prompts_file", str(empty_file)], f"Prompts file {empty_file} has no"),
      "no_prompts": ([], "No prompts"),
      "no_checkpoint": (["--prompt", "a cat", "--workdir", str(tmp_path / "fresh")],
                        f"No finished checkpoint in {fresh}"),
      "corrupt_checkpoint": (["--prompt", "a cat", "--workdir", str(corrupt)],
                             f"Could not (read|restore) .* {corrupt / 'checkpoints' / '2'}"),
      "bad_template": (["--prompt", "a cat", "--expand_with", "x", "--expand_template", "hi"],
                       "Expansion template 'hi' has no {prompt} placeholder"),
      "out_is_a_file": (["--prompt", "a cat", "--out", str(empty_file / "images")],
                        f"Output '{empty_file / 'images'}': {empty_file} is a file"),
      "out_has_samples": (["--prompt", "a cat", "--out", str(old_out)],
                          f"Output '{old_out}' already holds samples (1 files, e.g. "
                          "p0000_s000.png); pass a new directory, or --overwrite"),
      "bad_seed": (["--prompt", "a cat", "--seed", "-1"], "--seed=-1 must be in [0, 2**32)."),
      "bad_expand_sampling": (["--prompt", "a cat", "--expand_with", "x", "--expand_do_sample",
                               "--expand_temperature", "0"],
                              "Sampled expansion needs --expand_temperature from 1e-06 to 3.4e+38 "
                              "(lower is greedy) and 0 < --expand_top_p <= 1; got 0.0 and 1.0."),
      "beams_and_sampling": (["--prompt", "a cat", "--expand_with", "x", "--expand_do_sample",
                              "--expand_num_beams", "2"],
                             "Caption expansion samples (--expand_do_sample) or beam-searches "
                             "(--expand_num_beams=2)"),
      "bad_batch_size": (["--prompt", "a cat", "--batch_size", "0"],
                         "--batch_size=0 must be >= 1."),
      # Latin-1 bytes from a shell reach Python as surrogates; they cannot be written as UTF-8.
      "non_utf8_prompt": (["--prompt", "caf\udce9"], "The prompt is not valid UTF-8 text"),
      "empty_out": (["--prompt", "a cat", "--out="], "The output directory is empty"),
      "expand_options_without_a_model": (
          ["--prompt", "a cat", "--expand_num_beams", "4", "--expand_temperature", "0.5"],
          "--expand_num_beams, --expand_temperature only apply with --expand_with MODEL"),
      "one_expand_option_without_a_model": (
          ["--prompt", "a cat", "--expand_num_beams", "4"],
          "--expand_num_beams only applies with --expand_with MODEL (a seq2seq T5 that expands "
          "the prompts); pass it or drop it."),
      # Greedy expansion ignored them, and exited 0.
      "expand_sampling_options_without_sampling": (
          ["--prompt", "a cat", "--expand_with", "x", "--expand_temperature", "0.7",
           "--expand_top_p", "0.9"],
          "--expand_temperature=0.7, --expand_top_p=0.9 only apply when sampling expansions; "
          "pass --expand_do_sample, or drop them"),
      # An unset "$MODEL" sampled the prompts unexpanded and exited 0.
      "empty_expand_with": (["--prompt", "a cat", "--expand_with="], "--expand_with is empty"),
      # The run is read before the expander loads (a hub download, for a name).
      "no_checkpoint_and_an_expander": (
          ["--prompt", "a cat", "--workdir", str(tmp_path / "fresh"), "--expand_with", "x"],
          f"No finished checkpoint in {fresh}"),
      # pathlib's RuntimeError for a ~user with no home: a traceback.
      "workdir_of_no_user": (["--prompt", "a cat", "--workdir", "~no_such_user_llmimg/run"],
                             _NO_USER.format("--workdir", "run")),
      "out_of_no_user": (["--prompt", "a cat", "--out", "~no_such_user_llmimg/out"],
                         _NO_USER.format("--out", "out")),
      "prompts_file_of_no_user": (["--prompts_file", "~no_such_user_llmimg/p.txt"],
                                  _NO_USER.format("--prompts_file", "p.txt")),
      # Sampled first, then mkdir's "[Errno 17] File exists: '...link'".
      "out_is_a_dangling_link": (
          ["--prompt", "a cat", "--out", str(tmp_path / "link")],
          f"Output '{tmp_path / 'link'}': {tmp_path / 'link'} is a symbolic link to "
          f"{tmp_path / 'unmounted'}, which does not exist; create that directory"),
      "out_under_a_dangling_link": (
          ["--prompt", "a cat", "--out", str(tmp_path / "link" / "cats")],
          f"Output '{tmp_path / 'link' / 'cats'}': {tmp_path / 'link'} is a symbolic link to "
          f"{tmp_path / 'unmounted'}, which does not exist"),
      # Sampled first, then "[Errno 2] No such file or directory: .../.samples.jsonl.PID.tmp".
      "output_linked_into_a_missing_folder": (
          ["--prompt", "a cat", "--out", str(linked)],
          f"Output '{linked}': {linked / 'samples.jsonl'} is a symbolic link to "
          f"{tmp_path / 'unmounted' / 'samples.jsonl'}, whose folder {tmp_path / 'unmounted'} does "
          "not exist; create that directory (or mount its disk), or remove the link."),
  }[case]
  if case != "corrupt_checkpoint":
    message = re.escape(message)
  (tmp_path / "cwd").mkdir()
  proc = _run("--workdir", str(run.workdir), "--out", str(tmp_path / "out"), *args,
              cwd=tmp_path / "cwd")
  assert proc.returncode != 0
  assert re.search(f"sample.py: error: {message}", proc.stderr), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "out").exists() and not any((tmp_path / "cwd").iterdir())


# sample.py with its expander's generation running out of device memory, as XLA reports it.
_OUT_OF_MEMORY = """
import runpy, sys, jax
from llmimg_jax.text import TextGenerator
def exhausted(*args, **kwargs):
  raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 4000000000 bytes.")
TextGenerator.generate_tokens = exhausted
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_expansion_out_of_memory_is_one_line_naming_the_sizes(run, expander_dir, tmp_path):
  """--expand_max_length 1000000000 ended in XLA's RESOURCE_EXHAUSTED traceback. (The error is
  injected: a real one would first fill gigabytes of host memory with the expander's tokens.)"""
  proc = subprocess.run(
      [sys.executable, "-c", _OUT_OF_MEMORY, SCRIPT, "--workdir", str(run.workdir), "--out",
       str(tmp_path / "out"), "--prompt", "a cat", "--expand_with", expander_dir],
      env=one_device_env(), timeout=120, capture_output=True, text=True)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      "sample.py: error: out of memory (RESOURCE_EXHAUSTED: Out of memory allocating 4000000000 "
      "bytes.); lower --expand_max_length, --expand_max_new_tokens, --expand_num_beams, "
      "--batch_size or --num_per_prompt."), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_num_per_prompt_below_1_is_refused_before_the_run_is_read(tmp_path):
  """--num_per_prompt is checked with the other flags, before JAX starts and the checkpoint is
  looked for (here there is none: reading it would fail with another error); 1 passes that
  check."""
  procs = {n: subprocess.Popen(
      [sys.executable, SCRIPT, "--workdir", str(tmp_path / "no_run"), "--out",
       str(tmp_path / f"out{n}"), "--prompt", "a cat", "--num_per_prompt", n],
      env=one_device_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for n in ("0", "1")}
  errors = {n: proc.communicate(timeout=120)[1] for n, proc in procs.items()}
  assert procs["0"].returncode == 1
  assert errors["0"].strip().splitlines()[-1] == (
      "sample.py: error: --num_per_prompt=0 must be >= 1."), errors["0"][-2000:]
  assert "local device(s)" not in errors["0"]  # refused before JAX started
  assert procs["1"].returncode == 1
  assert errors["1"].strip().splitlines()[-1].startswith(
      f"sample.py: error: Workdir {tmp_path / 'no_run'} does not exist"), errors["1"][-2000:]
  assert not any(p.name.startswith("out") for p in tmp_path.iterdir())


_STRAY = ("unexpected argument(s) {}: sample.py takes flags only. Quote a prompt of several "
          "words (--prompt \"a red circle\"), and give a boolean flag as --name or --noname "
          "(--nooverwrite, or --overwrite=false), not '--name false'; nothing was sampled.")


@pytest.mark.parametrize("args, error", [
    (["--prompt", "a cat"],  # was absl's "flag --out=None: Flag --out must have a value ..."
     "--out is required: name a folder for the PNGs, grid.png and samples.jsonl, e.g. --out "
     "samples."),
    (["--prompt", "a cat", "--out", "o", "--num_per_prompt=four"],
     "--num_per_prompt=four: not a whole number; its default is --num_per_prompt=4."),
    # An unquoted prompt, and '--overwrite false' (which sets it): absl's whole help (68 lines),
    # the error last, exit status 1.
    (["--prompt", "a", "red", "circle", "--out", "o"], _STRAY.format("['red', 'circle']")),
    (["--prompt", "a cat", "--out", "o", "--overwrite", "false"], _STRAY.format("['false']"))])
def test_a_flag_error_is_one_line_like_train_and_evaluate(tmp_path, args, error):
  """A missing or mistyped flag was absl's "FATAL Flags parsing error: ..." plus a --helpshort
  hint, exit status 1; train.py and evaluate.py say "PROG: error: ..." and exit 2."""
  proc = _run("--workdir", str(tmp_path / "run"), *args, cwd=tmp_path)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines() == [f"sample.py: error: {error}"], proc.stderr[-2000:]
  assert not (tmp_path / "o").exists()


def test_an_expander_that_needs_torch_is_one_line_without_it(run, expander_dir, tmp_path):
  """A PyTorch-pickle expander (pytorch_model.bin) in a JAX-only install: the loader's 'install
  torch or convert to safetensors' ImportError was a traceback (python -m llmimg_jax.text prints
  it as one line)."""
  torch = pytest.importorskip("torch")
  from safetensors.torch import load_file
  pickled = tmp_path / "expander_pt"
  shutil.copytree(expander_dir, pickled)
  torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
  (pickled / "model.safetensors").unlink()
  no_torch = tmp_path / "no_torch"  # first on the path: `import torch` fails as if not installed
  no_torch.mkdir()
  (no_torch / "torch.py").write_text("raise ImportError(\"No module named 'torch'\")\n")
  env = one_device_env()
  env["PYTHONPATH"] = os.pathsep.join([str(no_torch), env["PYTHONPATH"]])
  proc = subprocess.run(
      [sys.executable, SCRIPT, "--workdir", str(run.workdir), "--out", str(tmp_path / "out"),
       "--prompt", "a cat", "--expand_with", str(pickled)],
      env=env, timeout=120, capture_output=True, text=True)
  assert proc.returncode == 1, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("sample.py: error: ") and "torch is not installed" in last, last
  assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


_HEAVY = ("jax", "flax", "orbax", "tensorflow_datasets", "grain", "transformers", "torch")
# sample.py run as __main__, printing at exit which of _HEAVY it imported.
_REPORT_IMPORTS = (
    "import atexit, runpy, sys\n"
    f"atexit.register(lambda: print('imported:', sorted(m for m in {_HEAVY!r} "
    "if m in sys.modules), file=sys.stderr))\n"
    "sys.argv[0] = sys.argv.pop(1)\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n")


@pytest.mark.parametrize("args, error", [
    (["--prompt", "a cat", "--seed", "-1"], "--seed=-1 must be in [0, 2**32)."),
    (["--prompt", " "], "The prompt is empty; give every prompt some text (an empty prompt would "
     "condition the generator on padding only)."),
    (["--prompt", "a cat", "--batch_size", "0"], "--batch_size=0 must be >= 1."),
    (["--prompt", "a cat", "--expand_with", "t5", "--expand_template", "{text}"],
     "Expansion template '{text}' has the field(s) ['text']; the only field is {prompt} (the "
     "whole prompt), and {{ }} are literal braces."),
    # Read as U+FFFD by the tokenizer, then the UTF-8 write of samples.jsonl failed after sampling.
    (["--prompt", "a cat", "--expand_with", "t5", "--expand_template", "caf\udce9 {prompt}"],
     "Expansion template 'caf\\udce9 {prompt}' is not valid UTF-8 text; set the terminal's "
     "encoding to UTF-8."),
    # Named as the flags, not as CaptionExpander's arguments ('CaptionExpander max_new_tokens=0').
    (["--prompt", "a cat", "--expand_with", "t5", "--expand_max_new_tokens", "0"],
     "--expand_max_new_tokens=0 must be >= 1."),
    (["--prompt", "a cat", "--expand_with", "t5", "--expand_num_beams", "-1"],
     "--expand_num_beams=-1 must be >= 1."),
    # Not as CaptionExpander's arguments: 'samples (do_sample) or beam-searches (num_beams > 1)'.
    (["--prompt", "a cat", "--expand_with", "t5", "--expand_do_sample", "--expand_num_beams", "4"],
     "Caption expansion samples (--expand_do_sample) or beam-searches (--expand_num_beams=4), "
     "not both; drop one of the two flags.")])
def test_bad_flags_fail_without_importing_jax(tmp_path, args, error):
  """run()'s checks come before JAX and the checkpoint load: they imported JAX, Orbax, Flax and
  Transformers all the same (2-3 s and 230 MB per bad flag), through llmimg_jax.sample."""
  proc = subprocess.run(
      [sys.executable, "-c", _REPORT_IMPORTS, SCRIPT, "--workdir", str(tmp_path / "run"), "--out",
       str(tmp_path / "out"), *args], env=one_device_env(), timeout=120, capture_output=True,
      text=True)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines() == [f"sample.py: error: {error}", "imported: []"], (
      proc.stderr[-2000:])


def test_an_out_in_the_runs_training_folder_fails_without_importing_jax(tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "config.json").write_text(
      json.dumps({"data": {"name": "captioned_folder", "folder": str(images)}}))
  proc = subprocess.run(
      [sys.executable, "-c", _REPORT_IMPORTS, SCRIPT, "--workdir", str(tmp_path / "run"), "--out",
       str(images / "samples"), "--prompt", "a cat"], env=one_device_env(), timeout=120,
      capture_output=True, text=True)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines() == [
      f"sample.py: error: Output '{images / 'samples'}' is inside the run's training images "
      f"(config.data.folder='{images}'): its PNGs would be images added to the folder, whose "
      "build the run's next resume reports as changed; pass an --out outside it, e.g. "
      "samples/NAME.", "imported: []"], proc.stderr[-2000:]
  assert not (images / "samples").exists()


def test_batch_size_help_says_it_is_rounded_up_to_the_device_count():
  """--batch_size 4 on 8 devices generated batches of 8 (the Sampler rounds it up to a multiple
  of the local device count), which only the Sampler's error for --batch_size 0 said. Asked of
  `sample.py --help`: importing sample here redefines --workdir in absl's FLAGS wherever an
  evaluate.py test ran before it in the same pytest worker (DuplicateFlagError)."""
  proc = subprocess.run([sys.executable, SCRIPT, "--help"], env=one_device_env(), timeout=120,
                        capture_output=True, text=True)
  assert ("--batch_size: Images per jitted batch over all local devices, rounded up to a multiple "
          "of their count.") in " ".join(proc.stdout.split()), proc.stdout + proc.stderr
