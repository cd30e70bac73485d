"""The training loop end to end on a tiny config: checkpoints, resume, samples, TensorBoard."""
import dataclasses
import json
import logging
import re
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import logging as absl_logging
from PIL import Image

from llmimg_jax.eval import in_training
from llmimg_jax.images import captioned_grid
from llmimg_jax.sample.sampler import text_setup
from llmimg_jax.train import checkpoint, loop
from llmimg_jax.train.state import build_models, build_text, save_text_files
from llmimg_jax.train.step import generate_images
from llmimg_jax.train.summaries import progress_bar
from tests.sample.utils import one_device_env
from tests.text.utils import sentencepiece_tokenizer_dir
from tests.train.test_summaries import _Stderr
from tests.train.utils import (_damage, _equal, _log_window, _scalar_events, _scalars,
                               tiny_config, tiny_pretrained_t5)


def _max_diff(a, b) -> float:
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


def test_short_run_writes_checkpoints_and_resumes(shapes_data_dir, tmp_path, caplog,
                                                  monkeypatch):
  workdir = tmp_path / "run"
  config = tiny_config(shapes_data_dir)
  jit_train_step = loop.jit_train_step

  d_losses, returned, bars = [], [], []
  # Seconds added to the loop's step clock (not waited for): the first call's and step 2's.
  added = [0.0]
  monkeypatch.setattr(loop, "time", types.SimpleNamespace(
      perf_counter=lambda: time.perf_counter() + added[0]))

  def slow_first_call(*args):  # as if compiling took 1000 s longer: images/s must not count it
    step_fn, delays = jit_train_step(*args), iter([1000.0, 0.5])  # step 2: at least 0.5 s
    def step(*a):
      added[0] += next(delays, 0.0)
      state, metrics = step_fn(*a)
      d_losses.append(float(metrics["d_loss"]))
      returned.append(time.time())  # tqdm's clock
      if len(returned) == 3:  # a record while the bar is drawn (as train.py logs: absl's handler)
        logging.getLogger("llmimg_jax.train.loop").warning("At step 3.")
      return state, metrics
    return step
  monkeypatch.setattr(loop, "jit_train_step", slow_first_call)
  monkeypatch.setattr(loop, "progress_bar", lambda *a: bars.append(progress_bar(*a)) or bars[-1])
  stderr = _Stderr(terminal=False)  # a batch job's log file
  monkeypatch.setattr(sys, "stderr", stderr)
  monkeypatch.setattr(absl_logging, "_warn_preinit_stderr", False)  # flags are not parsed here
  monkeypatch.setattr(logging.getLogger(), "handlers",
                      [absl_logging.ABSLHandler(absl_logging.PythonFormatter())])
  monkeypatch.setattr(logging.getLogger("llmimg_jax"), "level", logging.INFO)
  closed = []  # the iterators train() closed (stopping grain's workers), at their positions
  monkeypatch.setattr(loop, "close_iterator",
                      lambda it: closed.append(json.loads(it.get_state())["last_seen_indices"]))
  first = jax.device_get(loop.train(config, workdir))
  monkeypatch.undo()
  assert int(first.step) == 4
  assert closed == [{"0": 4 * config.train.batch_size - 1}]  # once, after its 4 batches
  # The record is a line of the log file, not the end of the bar's; a line says what the run
  # trains, and the last where it ended.
  messages = [m[1] for line in stderr.getvalue().split("\n")
              if (m := re.fullmatch(r"[IW]\d{4} [\d:.]+ +\d+ \w+\.py:\d+\] (.*)", line))]
  assert "At step 3." in messages, stderr.getvalue()
  assert (f"Training captioned_shapes/tiny_32 at 32px from step 0 to 4 in {workdir}: global "
          "batch 8 over 8 cpu device(s) on 1 host(s).") in messages, messages
  assert messages[-1] == (
      f"Training ended at step 4 of 4 (done); latest checkpoint: {workdir}/checkpoints/4; "
      f"latest sample grid: {workdir}/samples/step_0000004.png."), messages
  # Steps 1-2 are logged at step 2: step 2 alone is timed, 0.5 s + its run (0.3 s alone, 2.5 s
  # while 40 other processes ran), where counting the first call would give under
  # 2 * batch / 1000 s.
  images_per_sec = _scalars(workdir / "tensorboard", "train/images_per_sec")
  assert sorted(images_per_sec) == [2, 4], images_per_sec
  batch = config.train.batch_size
  assert batch / 100 < images_per_sec[2] <= batch / 0.5, images_per_sec
  # Nor do the progress bar's rate and ETA: its clock starts once the first step has run (and
  # moves on by the saves and grids off the clock since).
  assert returned[0] <= bars[0].start_t, (returned, bars[0].start_t)
  # Each logged loss is the mean over the steps since the last log.
  logged = _scalars(workdir / "tensorboard", "train/d_loss")
  np.testing.assert_allclose([logged[2], logged[4]], [np.mean(d_losses[:2]),
                                                      np.mean(d_losses[2:])], rtol=1e-6)
  # The grid shows the EMA generator's images of each prompt in its row (fixed noise).
  tokenizer, t5_config, _ = build_text(config)
  prompts, k = list(config.train.sample_prompts), config.train.samples_per_prompt
  tokens = tokenizer(prompts)
  z = jax.random.normal(jax.random.PRNGKey(config.seed + 1), (len(prompts) * k,
                                                              config.model.z_dim))
  images = generate_images(build_models(config, t5_config), first.ema_params, first.text_params,
                           z, *(np.repeat(tokens[n], k, axis=0)
                                for n in ("input_ids", "attention_mask")))
  want = np.asarray(captioned_grid(np.asarray(images), prompts), np.int32)
  got = np.asarray(Image.open(workdir / "samples" / "step_0000004.png"), np.int32)
  assert got.shape == want.shape and np.abs(got - want).max() <= 1  # XLA rounding of uint8
  manager = checkpoint.make_manager(workdir, config)
  assert manager.all_steps() == [2, 4]
  assert (workdir / "config.json").exists()
  assert (workdir / "samples" / "step_0000004.png").stat().st_size > 0
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))

  # The saved state equals the state the run ended with.
  restored = checkpoint.restore(manager, 4, checkpoint.abstract_like(first))
  assert _max_diff(first, restored) == 0.0

  # The same command with more steps resumes at the saved step instead of starting over.
  config.train.steps = 6
  closed.clear()
  monkeypatch.setattr(loop, "close_iterator",
                      lambda it: closed.append(json.loads(it.get_state())["last_seen_indices"]))
  with caplog.at_level(logging.INFO):
    second = loop.train(config, workdir)
  monkeypatch.undo()
  assert "Resumed from" in caplog.text and "at step 4" in caplog.text
  assert int(second.step) == 6
  # The input pipeline resumed where step 4 left it: 2 more batches, not 2 from the start again.
  assert closed == [{"0": 6 * config.train.batch_size - 1}]
  assert (workdir / "samples" / "step_0000006.png").exists()  # the last step, off sample_every
  assert checkpoint.make_manager(workdir, config).latest_step() == 6
  assert _max_diff(first.g_params, jax.device_get(second.g_params)) > 0.0

  # Fewer steps than the run has made: nothing to train, and it says so.
  config.train.steps = 5
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    third = loop.train(config, workdir)
  assert f"The run in {workdir} is at step 6, at or past config.train.steps=5" in caplog.text
  assert int(third.step) == 6 and checkpoint.make_manager(workdir, config).all_steps() == [2, 4, 6]

  # A damaged step 6 is set aside and steps 5-6 are trained again from step 4: TensorBoard shows
  # the new step 6 only, not both runs' curves over each other.
  _damage(workdir / "checkpoints" / "6", "truncated")
  config.train.steps = 6
  assert int(loop.train(config, workdir).step) == 6
  assert [step for step, _ in _scalar_events(workdir / "tensorboard", "train/d_loss")] == [2, 4, 6]

  # The run trained on 8 simulated devices samples in a plain 1-device process (sample.py).
  out = tmp_path / "samples"
  proc = subprocess.run(
      [sys.executable, str(Path(__file__).parents[2] / "sample.py"), "--workdir", str(workdir),
       "--prompt", "a red circle", "--num_per_prompt", "2", "--seed", "0", "--out", str(out)],
      env=one_device_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(l) for l in (out / "samples.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [6, 6]
  assert all((out / r["file"]).stat().st_size > 0 for r in records)


def test_a_dataset_of_one_image_is_refused_before_compiling(tmp_path):
  """It trained: every batch held the one image, so each of D's "mismatched" pairs matched."""
  folder = tmp_path / "one"
  folder.mkdir()
  Image.new("RGB", (32, 32), (200, 0, 0)).save(folder / "red.png")
  (folder / "captions.jsonl").write_text(json.dumps({"file": "red.png", "caption": "red"}) + "\n")
  config = tiny_config(tmp_path / "tfds")
  config.data.name, config.data.config, config.data.folder = "captioned_folder", "", str(folder)
  with pytest.raises(ValueError, match=r"has 1 record; training needs at least 2 \(D learns "
                     r"from mismatched image-caption pairs\): add images"):
    loop.train(config, tmp_path / "run")
  assert not (tmp_path / "run" / "checkpoints").exists()
  # A workdir in the folder (its grids would change the folder's build): refused before the build.
  with pytest.raises(ValueError, match=r"--workdir '.*one/runs/a' is inside config\.data\.folder="
                     r"'.*one': the run's sample grids would be images added to the folder"):
    loop.train(config, folder / "runs" / "a")
  assert not (folder / "runs").exists()


def test_a_run_from_a_pretrained_t5_starts_from_its_weights(tmp_path, monkeypatch):
  """train() builds its first state with text.checkpoint's encoder weights: with a random encoder
  instead, a frozen text encoder would never learn anything (checked up to the step, which is not
  compiled)."""
  config = tiny_config(tmp_path / "unused_data")
  config.text.mode = "frozen"
  config.text.checkpoint = tiny_pretrained_t5(tmp_path / "t5")
  pretrained = build_text(config)[2]
  started, create_state = [], loop.create_state

  def first_state(*args, abstract=False):
    if abstract:  # what a resume restores into
      return create_state(*args, abstract=True)
    started.append(jax.device_get(create_state(*args).text_params))
    raise RuntimeError("stopped before the first step")
  monkeypatch.setattr(loop, "make_iterator", lambda *args, **kwargs: None)
  monkeypatch.setattr(loop, "create_state", first_state)
  with pytest.raises(RuntimeError, match="stopped before the first step"):
    loop.train(config, tmp_path / "run")
  assert len(started) == 1 and _equal(started[0], pretrained)


def test_a_fresh_start_replaces_an_earlier_runs_text_files(tmp_path, monkeypatch):
  """WORKDIR/text (the T5 config and tokenizer sampling builds the encoder from) of an earlier run
  on another T5, in a workdir without checkpoints, is written anew by a run from step 0: kept, it
  would not fit this run's checkpoints. (Checked up to the step, which is not compiled.)"""
  config = tiny_config(tmp_path / "unused_data")
  config.text.checkpoint = tiny_pretrained_t5(tmp_path / "t5")
  tokenizer, t5_config, _ = build_text(config)
  workdir = tmp_path / "run"
  workdir.mkdir()
  save_text_files(workdir, tokenizer, dataclasses.replace(t5_config, d_model=16))

  def stop(*args):
    raise RuntimeError("stopped before the first step")
  monkeypatch.setattr(loop, "make_iterator", lambda *args, **kwargs: None)
  monkeypatch.setattr(loop, "jit_train_step", stop)
  with pytest.raises(RuntimeError, match="stopped before the first step"):
    loop.train(config, workdir)
  assert text_setup(config, workdir)[1] == t5_config


def test_a_resume_on_another_tokenizer_or_t5_config_is_refused(tmp_path, monkeypatch, caplog):
  """WORKDIR/text holds the tokenizer and T5 config a run on a pretrained T5 started with, which
  sampling reads. A resume whose text.checkpoint (another path, or the same one re-saved) held
  another tokenizer or config trained on those, while sample.py and evaluate.py kept the run's:
  one prompt, two embeddings. The same files at another path resume. (Checked up to the step,
  which is not compiled; the restore is stood in for.)"""
  config = tiny_config(tmp_path / "unused_data")
  config.text.checkpoint = tiny_pretrained_t5(tmp_path / "t5")
  tokenizer, t5_config, _ = build_text(config)
  workdir = tmp_path / "run"
  workdir.mkdir()
  save_text_files(workdir, tokenizer, t5_config)
  (workdir / "config.json").write_text(config.to_json())

  def stop(*args):
    raise RuntimeError("stopped before the first step")
  monkeypatch.setattr(loop, "make_iterator", lambda *args, **kwargs: None)
  monkeypatch.setattr(loop, "_restore_or_init",
                      lambda *args: (types.SimpleNamespace(step=np.int32(2)), True))
  monkeypatch.setattr(loop, "jit_train_step", stop)
  moved = shutil.copytree(tmp_path / "t5", tmp_path / "t5_moved")
  config.text.checkpoint = str(moved)
  with pytest.raises(RuntimeError, match="stopped before the first step"):
    loop.train(config, workdir)
  gelu = shutil.copytree(tmp_path / "t5", tmp_path / "t5_gelu")  # relu's shapes
  hf_config = json.loads((gelu / "config.json").read_text())
  (gelu / "config.json").write_text(json.dumps({**hf_config, "feed_forward_proj": "gelu",
                                                "dense_act_fn": "gelu"}))
  spiece = shutil.copytree(tmp_path / "t5", tmp_path / "t5_spiece")
  sentencepiece_tokenizer_dir(str(spiece))  # its tokenizer_config.json names T5Tokenizer
  trained = re.escape(str(moved))  # config.json names the last run's
  for other, what in ((gelu, r"another T5 config \(feed_forward_proj: 'relu' -> 'gelu'.*\)"),
                      (spiece, r"another tokenizer \('a red circle': \[.*\] -> \[.*\]\)")):
    config.text.checkpoint = str(other)
    with pytest.raises(checkpoint.ConfigMismatchError, match=(
        rf"The checkpoints in .*run/checkpoints were trained with the tokenizer and T5 config in "
        rf".*run/text, but config\.text\.checkpoint='.*{other.name}' holds {what}\. Rerun with "
        rf"the text\.checkpoint the run was trained with \('{trained}' in .*run/config\.json\), "
        r"or pass a new --workdir for a new run")):
      loop.train(config, workdir)
  assert text_setup(config, workdir)[1] == t5_config
  # The run's files cut short (e.g. copied in by hand): a warning, as before the comparison.
  (workdir / "text" / "config.json").write_text("{")
  with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError, match="before the first"):
    loop.train(config, workdir)
  assert "Could not read the run's tokenizer and T5 config in" in caplog.text


def test_a_fresh_start_traces_init_state_once(tmp_path, monkeypatch):
  """The shapes a resume restores into and a fresh start's state come from one trace of
  init_state (each trace of the whole model's init costs ~0.15-0.5 s); stopped before the step."""
  traces, init_state = [], loop.init_state

  def traced(*args):
    traces.append(args)
    return init_state(*args)

  def stop(*args):
    raise RuntimeError("stopped before the first step")
  monkeypatch.setattr(loop, "init_state", traced)
  monkeypatch.setattr(loop, "make_iterator", lambda *args, **kwargs: None)
  monkeypatch.setattr(loop, "jit_train_step", stop)
  with pytest.raises(RuntimeError, match="stopped before the first step"):
    loop.train(tiny_config(tmp_path / "unused_data"), tmp_path / "run")
  assert len(traces) == 1


def test_a_best_past_the_resumed_step_gives_way_to_the_best_before_it(tmp_path, caplog):
  """best.json is written before the new best's checkpoint is complete: a kill between the two
  left it naming a step the resumed run does not have, and it was only set aside, so the best
  before it (its checkpoint still there) was forgotten and deleted by the next save."""
  best_file = tmp_path / checkpoint.BEST_FILE
  best = {"step": 8, "caption_accuracy": 0.9,
          "former": {"step": 4, "caption_accuracy": 0.5, "size": float("nan")}}
  best_file.write_text(json.dumps(best))
  with caplog.at_level(logging.WARNING):
    in_training.set_aside_best_past(tmp_path, 6, [2, 4, 6])
  # Strict JSON, as every best.json is written (report.to_json): a NaN metric as null.
  assert json.loads(best_file.read_text(), parse_constant=pytest.fail) == {
      **best["former"], "size": None}
  assert (tmp_path / "best.json.stale").read_text() == json.dumps(best)  # moved as it is
  assert "the best before it, step 4, is best.json again" in caplog.text
  best_file.write_text(json.dumps(best))  # the former's checkpoint is gone: nothing to keep
  in_training.set_aside_best_past(tmp_path, 6, [6])
  assert not best_file.exists()
  best_file.write_text(json.dumps(best))  # not past the run's step: left as it is
  in_training.set_aside_best_past(tmp_path, 8, [4, 8])
  assert best_file.read_text() == json.dumps(best)
  # A best of an earlier evaluation (kept with its checkpoint) past the run's step: set aside too.
  for step in (6, 9):
    (tmp_path / f"earlier_best_{step}.json").write_text(json.dumps({"step": step}))
  in_training.set_aside_best_past(tmp_path, 8, [4, 6, 8])
  assert checkpoint.earlier_best_steps(tmp_path) == {6}
  assert (tmp_path / "earlier_best_9.json.stale").exists()


def test_a_metric_a_step_did_not_measure_is_averaged_over_the_steps_that_did():
  """d_mismatch is unmeasured at a step with no mismatched pair (every neighbour's caption its
  own): the window's mean is over the other steps (it was NaN), and a window without one leaves
  it out."""
  measured = lambda value, flag=1.0: {"d_mismatch": value, "d_mismatch_measured": flag}
  logged = _log_window([measured(0.5), measured(0.0, 0.0), measured(-0.1)])
  np.testing.assert_allclose(logged["d_mismatch"], 0.2, rtol=1e-6)
  assert logged["d_loss"] == 1.0 and logged["finite"] == 1.0
  assert "d_mismatch_measured" not in logged
  assert "d_mismatch" not in _log_window([measured(0.0, 0.0)])
