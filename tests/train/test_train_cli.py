"""train.py in subprocesses: SIGTERM saves and exits 0, kill -9 resumes bitwise, and config
errors stop in seconds with one paragraph."""
from __future__ import annotations

import concurrent.futures
import inspect
import os
import random
import re
import signal
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from llmimg_jax.train import checkpoint, loop
from tests.train import cli_utils, forked_runs
from tests.train.cli_utils import Proc, finished_steps, flags, train_args, unwritable
from tests.train.utils import tiny_config

STEPS = 10
# ckpt_every 3: a SIGTERM after the first logged step (at step 1 or 2 here) saves only because of
# the stop.
CHANGES = {"train.steps": STEPS, "train.log_every": 1, "train.ckpt_every": 3,
           "train.sample_every": 1000}  # tiny_config's


@pytest.mark.slow
def test_sigterm_saves_and_exits_0_then_kill9_resumes_bitwise(shapes_data_dir, tmp_path):
  config = tiny_config(shapes_data_dir)
  config.update_from_flattened_dict(CHANGES)
  reference = loop.train(config, tmp_path / "reference")  # uninterrupted
  run = tmp_path / "run"
  args = train_args(shapes_data_dir, run, *flags(CHANGES))

  # Preemption: SIGTERM after the first logged step -> finish the step, save, exit 0.
  proc = Proc(args)
  proc.wait_for(lambda: re.search(r"d=-?[\d.]+, g=", proc.output), what="the first logged step")
  proc.popen.send_signal(signal.SIGTERM)
  assert proc.finish() == 0, proc.output[-3000:]
  stopped = int(re.search(r"Stopped by SIGTERM after step (\d+)", proc.output).group(1))
  assert 1 <= stopped < STEPS and finished_steps(run)[-1] == stopped, finished_steps(run)
  bar_steps = re.findall(rf"train: .*?\| *(\d+)/{STEPS} ", proc.output)
  assert int(bar_steps[-1]) == stopped, bar_steps  # the progress bar ends at the saved step
  assert (f"Training ended at step {stopped} of {STEPS} (stopped by SIGTERM); latest checkpoint: "
          f"{run / 'checkpoints' / str(stopped)}; ") in proc.output, proc.output[-3000:]

  # Crash: the same command, kill -9 at a random moment after it saved a new checkpoint
  # (possibly in the middle of the next save).
  proc = Proc(args)
  proc.wait_for(lambda: finished_steps(run)[-1] > stopped, what="a new checkpoint")
  assert f"Resumed from {run / 'checkpoints'} at step {stopped}" in proc.output
  time.sleep(random.uniform(0.0, 1.0))
  proc.popen.kill()
  assert proc.finish() == -signal.SIGKILL, proc.output[-3000:]
  last = finished_steps(run)[-1]
  assert stopped < last < STEPS, "killed too late: the run had finished"

  # The same command again resumes from the last finished checkpoint and completes.
  proc = Proc(args)
  assert proc.finish() == 0, proc.output[-3000:]
  assert f"at step {last}" in proc.output
  assert finished_steps(run)[-1] == STEPS
  assert f"Training ended at step {STEPS} of {STEPS} (done); " in proc.output, proc.output[-3000:]
  leftovers = [p.name for p in (run / "checkpoints").iterdir() if not p.name.isdigit()]
  assert not leftovers, leftovers  # interrupted saves' temporary directories are cleaned up

  # Another model in the same workdir: status 3 and one error, none of the tracebacks of
  # Orbax's abandoned reads.
  proc = Proc(train_args(shapes_data_dir, run, *flags({**CHANGES, "model.nf_g": 16})))
  assert proc.finish() == 3, proc.output[-3000:]
  assert re.search(r"train.py: error: The checkpoints in .* model\.nf_g: 8 -> 16", proc.output)
  assert "Traceback" not in proc.output and "Exception ignored" not in proc.output, proc.output

  manager = checkpoint.make_manager(run, config)
  resumed = checkpoint.restore(manager, STEPS, checkpoint.abstract_like(reference))
  same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                      jax.device_get(reference), jax.device_get(resumed))
  assert all(jax.tree.leaves(same)), same  # every parameter, optimizer moment, EMA, rng: bitwise


# train.py with loop.train replaced by one that prints what it was called with: the flags' path
# from the command line to the training loop, in seconds (no compilation).
_RECORDING_TRAIN = """
import runpy, sys
from llmimg_jax.train import loop
def train(config, workdir, *, start_fresh_if_corrupt=False):  # loop.train's signature
  print(f"train(steps={config.train.steps}, workdir={workdir}, "
        f"start_fresh_if_corrupt={start_fresh_if_corrupt})", flush=True)
loop.train = train
sys.argv = sys.argv[1:]  # [train.py, flags...]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_start_fresh_if_corrupt_flag_reaches_the_training_loop(shapes_data_dir, tmp_path):
  real = inspect.signature(loop.train).parameters["start_fresh_if_corrupt"]
  assert real.kind is real.KEYWORD_ONLY and real.default is False  # as the stand-in's
  procs = {fresh: Proc([sys.executable, "-c", _RECORDING_TRAIN,
                        *train_args(shapes_data_dir, tmp_path / "run", "--config.train.steps=7",
                                    *(["--start_fresh_if_corrupt"] if fresh else []))[1:]])
           for fresh in (False, True)}
  for fresh, proc in procs.items():
    assert proc.finish(timeout=120) == 0, proc.output[-3000:]
    assert (f"train(steps=7, workdir={tmp_path / 'run'}, start_fresh_if_corrupt={fresh})"
            in proc.output), proc.output[-3000:]


def test_config_errors_fail_in_seconds_before_compiling(shapes_data_dir, tmp_path):
  locked_run = tmp_path / "locked_run"  # an earlier run's checkpoints/, not writable now
  (locked_run / "checkpoints").mkdir(parents=True)
  with unwritable(locked_run / "checkpoints"):
    _config_errors_fail_in_seconds(shapes_data_dir, tmp_path, locked_run)


def _config_errors_fail_in_seconds(shapes_data_dir, tmp_path, locked_run):
  typo_file = tmp_path / "typo_config.py"
  typo_file.write_text("from tests.train.utils import tiny_config\n\n\n"
                       "def get_config(data_dir):\n  c = tiny_config(data_dir)\n"
                       "  c.model.nf_gg = 8\n  return c\n")
  no_images = tmp_path / "no_images"  # its captions name a file that is not there
  no_images.mkdir()
  (no_images / "captions.jsonl").write_text('{"file": "gone.png", "caption": "a red circle"}\n')
  one_image = tmp_path / "one_image"  # D needs a mismatched pair
  one_image.mkdir()
  Image.new("RGB", (32, 32), "red").save(one_image / "red.png")
  (one_image / "captions.jsonl").write_text('{"file": "red.png", "caption": "red"}\n')
  a_file = tmp_path / "a_file"
  a_file.write_text("not a run")
  mistyped_file = tmp_path / "mistyped_config.py"  # ml_collections raises a TypeError
  mistyped_file.write_text("from tests.train.utils import tiny_config\n\n\n"
                           "def get_config(data_dir):\n  c = tiny_config(data_dir)\n"
                           "  c.train.steps = 'ten'\n  return c\n")
  no_weights = tmp_path / "t5_without_weights"  # e.g. a download that stopped after config.json
  no_weights.mkdir()
  (no_weights / "config.json").write_text("{}")
  shut = tmp_path / "shut"  # a folder this user may not enter (under modes_hold())
  shut.mkdir()
  other_tfds = tmp_path / "tfds_of_another"  # its captioned_shapes/ one this user may not enter
  other_tfds.mkdir()
  (other_tfds / "captioned_shapes").symlink_to(shut)
  shut_cases = {  # each was "not found", "could not build", or a traceback (Path.exists)
      (f"--workdir={shut / 'run'}",): f"--workdir '{shut / 'run'}'",
      (f"--config.text.checkpoint={shut / 't5'}",): f"T5 checkpoint '{shut / 't5'}'",
      ("--config.data.name=captioned_folder", f"--config.data.folder={shut / 'images'}"): (
          f"data.folder '{shut / 'images'}'"),
      (f"--config={shut / 'config.py'}",): f"--config '{shut / 'config.py'}'",
      (f"--config.data.data_dir={other_tfds}",): (
          f"The dataset folder {other_tfds}/captioned_shapes/tiny_32/1.0.0")}
  none_file = tmp_path / "none_config.py"
  none_file.write_text("def get_config():\n  pass\n")
  raising_file = tmp_path / "raising_config.py"
  raising_file.write_text("def get_config(data_dir):\n  raise RuntimeError('no such preset')\n")
  cases = {  # extra args -> what the error must say
      ("--config.train.batch_size=12",): (
          r"config\.train\.batch_size=12 is not divisible by the 8 devices.*"
          r"--config\.train\.batch_size=16, or run on a device count that divides 12 \(a run "
          r"resuming its checkpoints keeps its batch size\)\."),
      ("--config.model.resolution=48", "--config.data.image_size=48"): (
          r"config\.model\.resolution=48 is not supported; use one of \(32, 64, 128, 256\)"),
      ("--config.train.stepz=3",): r"unknown config key 'stepz' in --config\.train\.stepz=3 "
                                   r"\(did you mean \"steps\"\?\)\. A --config\.KEY=VALUE",
      (f"--config={typo_file}:{shapes_data_dir}",): (
          r"config\.model\.nf_gg is not a config key \(did you mean config\.model\.nf_g\?\)"),
      ("--config.data.name=captioned_folder", f"--config.data.folder={tmp_path / 'nope'}"): (
          r"captioned_folder needs data\.folder set to an existing folder.*nope"),
      ("--config.data.name=imagenet",): r"Unknown dataset data\.name='imagenet'",
      ("--workdir=gs://bucket/run",): r"workdir 'gs://bucket/run' is a URL.*gcsfuse",
      ("--workdir=",): r"--workdir is blank",  # e.g. --workdir=$RUN with RUN unset
      ("--workdir=~no_such_user_llmimg/run",): (  # was expanduser's RuntimeError, a traceback
          r"--workdir '~no_such_user_llmimg/run': ~no_such_user_llmimg is no user's home "
          r"directory \(no user 'no_such_user_llmimg' here\); write the path out in full, or "
          r"~/ for your own home\."),
      ("--config.model.nf_g=0", "--config.model.z_dim=-1"): (
          r"config\.model\.nf_g=0 must be >= 1; config\.model\.z_dim=-1 must be >= 1"),
      (f"--workdir={a_file}",): r"workdir '.*a_file' is a file, not a directory",
      (f"--config.text.checkpoint={tmp_path / 'no_t5'}",): (
          r"T5 checkpoint directory not found: .*no_t5"),
      (f"--config.text.checkpoint={no_weights}",): (  # read in train(): it was a traceback
          r"config\.text\.checkpoint='.*t5_without_weights' could not be loaded: No T5 weights "
          r"in '.*t5_without_weights'"),
      ("--config.train.keep_checkpoints=None",): (
          r"--config\.train\.keep_checkpoints=None: invalid literal for int.*'None'\. A number "
          r"takes no None on the command line: set it to None in the --config file \(where None "
          r"is allowed\), or give a number\."),
      (f"--config={tmp_path / 'nope.py'}",): (
          r"could not load the --config file: .*No such file or directory: .*nope\.py"),
      (f"--config={raising_file}:{shapes_data_dir}",): (
          r"the --config file failed to load: RuntimeError: no such preset \(at "
          r".*raising_config\.py:2\)"),
      (f"--config={mistyped_file}:{shapes_data_dir}",): (
          r"the --config file failed to load: TypeError: Could not override field 'steps' "
          r"\(reference\)\. ten is of original type <class 'str'> .* "
          r"\(at .*mistyped_config\.py:6\)"),
      (f"--config={cli_utils.CONFIG_FILE}",): (  # without its :DATA_DIR argument
          r"the --config file failed to load: TypeError: get_config\(\) missing 1 required "
          r"positional argument: 'data_dir'"),
      ("--process_id=1",): r"--num_processes/--process_id without --coordinator_address",
      ("--num_processes=2", "--process_id=1"): (
          r"--num_processes/--process_id without --coordinator_address would train one "
          r"independent process per host"),
      ("--config.data.name=captioned_folder", f"--config.data.folder={no_images}"): (
          r"captioned_folder: no usable image in .*no_images \(skipped: \{'unknown_file': 1\}\)"),
      ("--config.train.steps.x=1",): (
          r"unknown config key .*train\.steps\.x in --config\.train\.steps\.x=1"),
      # Orbax waited 5 minutes for a step directory it could not make, then raised a TimeoutError.
      (f"--workdir={locked_run}",): (
          r"The run cannot write to its workdir \(.*locked_run/checkpoints: PermissionError: "
          r"(Operation not permitted|Permission denied)\)"),
      (f"--workdir={locked_run / 'checkpoints' / 'new_run'}",): (  # a new one: its parent
          r"The run cannot write to its workdir \(.*locked_run/checkpoints: PermissionError"),
      **{extra: re.escape(f"{named}: {shut} (d---------, owner ") + r"\S+\) does not let this "
         r"user \(\S+\) in, so nothing in it can be read or written" for extra, named in
         shut_cases.items()},
      (f"--config={none_file}",): (  # the file named: a flagfile may hold the --config
          r"the --config file .*none_config\.py: its get_config\(\) returned None"),
      ("--config.data.name=captioned_folder", f"--config.data.folder={one_image}"): (
          r"has 1 record; training needs at least 2"),  # was a traceback, exit 1
      # Its sample grids were images of the folder: each resume said it changed since its build.
      ("--config.data.name=captioned_folder", f"--config.data.folder={one_image}",
       f"--workdir={one_image / 'run'}"): (
          rf"--workdir '{one_image / 'run'}' is inside config\.data\.folder='.*one_image': the "
          r"run's sample grids would be images added to the folder"),
      (f"--config.data.data_dir={a_file / 'tfds'}",): (  # was os.makedirs' traceback
          r"Could not build captioned_shapes/tiny_32 in data\.data_dir='.*a_file/tfds' "
          r"\(NotADirectoryError: .*set data\.data_dir"),
  }
  if (user := cli_utils.modes_hold()) is None:  # root that cannot drop its capabilities
    for extra in shut_cases:
      del cases[extra]
  # "Before compiling" is JAX_LOG_COMPILES logging nothing, not a wall-clock bound. Runs are
  # forked from one process that imported the package (forked_runs: ~0.7 s of CPU each instead
  # of ~2.1 s), two at a time, each within 120 s; those in `shut` are new processes, one per
  # core, under modes_hold()'s prefix (setpriv without the capabilities that pass mode bits, as
  # root).
  forked = [extra for extra in cases if extra not in shut_cases]
  ends = forked_runs.run_forked(
      [train_args(shapes_data_dir, tmp_path / "run", *extra)[1:] for extra in forked], tmp_path,
      ["llmimg_jax.train.loop", "tests.train.utils", "absl.app", "ml_collections.config_flags"],
      cli_utils.env(JAX_LOG_COMPILES="1"))
  procs = {extra: (end.returncode, end.output) for extra, end in zip(forked, ends)}

  def run(extra: tuple[str, ...]) -> tuple[int, str]:
    proc = Proc([*user, *train_args(shapes_data_dir, tmp_path / "run", *extra)], cwd=tmp_path,
                JAX_LOG_COMPILES="1")
    return proc.finish(timeout=120), proc.output
  shut_out = [extra for extra in cases if extra in shut_cases]
  with cli_utils.closed(shut), concurrent.futures.ThreadPoolExecutor(
      len(os.sched_getaffinity(0))) as pool:
    procs.update(zip(shut_out, pool.map(run, shut_out)))
  for extra, pattern in cases.items():
    returncode, output = procs[extra]
    assert returncode == 2, output[-2000:]
    assert re.search(f"train.py: error: .*{pattern}", output), output[-2000:]
    assert "Traceback" not in output and "Compiling" not in output, output
  assert not (tmp_path / "run").exists()
  assert not (tmp_path / "checkpoints").exists()  # nor the current directory (a blank --workdir)
  assert [p.name for p in locked_run.iterdir()] == ["checkpoints"]
  assert not (one_image / "run").exists()


@pytest.mark.parametrize("stray", [
    # absl's boolean flags take no separate value: this was --start_fresh_if_corrupt with "false"
    # left over and dropped, so the run moved its checkpoints aside and trained from step 0.
    ("--start_fresh_if_corrupt", "false"),
    ("config.train.steps=2000",),  # the override without its "--": dropped, the run trained 4 steps
])
def test_a_stray_argument_stops_the_run_before_anything_is_read(tmp_path, stray):
  run = tmp_path / "run"
  (run / "checkpoints").mkdir(parents=True)  # an earlier run's checkpoints: left as they are
  proc = Proc(train_args(tmp_path / "data", run, *stray), cwd=tmp_path)
  assert proc.finish(timeout=120) == 2, proc.output[-3000:]
  assert (f"train.py: error: unexpected argument(s) [{stray[-1]!r}]: train.py takes flags only."
          in proc.output), proc.output[-3000:]
  assert "--nostart_fresh_if_corrupt" in proc.output and "Traceback" not in proc.output
  assert [p.name for p in run.iterdir()] == ["checkpoints"] and not (tmp_path / "data").exists()


def test_distributed_alone_without_a_cluster_names_the_one_host_fix(tmp_path):
  """configs/coco_256.py's command has --distributed, for a TPU pod slice; on one multi-GPU host
  (no cluster for JAX to detect) it stopped naming only the multi-host flags."""
  proc = Proc(train_args(tmp_path / "data", tmp_path / "run", "--distributed"), cwd=tmp_path)
  assert proc.finish(timeout=120) == 2, proc.output[-3000:]
  assert ("on one host (several GPUs too), drop --distributed: train.py uses all of its devices "
          "without it." in proc.output), proc.output[-3000:]
  assert "Traceback" not in proc.output and not (tmp_path / "run").exists()


@pytest.mark.parametrize("sig, status, message", [
    (signal.SIGINT, 130, "interrupted by Ctrl-C without saving"),
    # A scheduler's stop (`kill`): the process ended silently with status 143.
    (signal.SIGTERM, 143, "stopped by SIGTERM before a step could be saved (while building, "
     "restoring or compiling)"),
])
def test_a_signal_before_the_first_step_is_one_line_not_a_traceback(shapes_data_dir, tmp_path,
                                                                     sig, status, message):
  """Ctrl-C or SIGTERM while the run builds, restores or compiles (minutes at scale) has no step
  to save: one line says what is kept and how to resume, not a KeyboardInterrupt traceback."""
  # train() stands in for the build/restore/compile phase and never reaches a step (a real one
  # could finish its 4 steps before the signal lands, with a warm compilation cache). Ctrl-C's
  # KeyboardInterrupt as from a shell: pytest-xdist's workers ignore SIGINT, and so would a child.
  args = train_args(shapes_data_dir, tmp_path / "run")
  stand_in = ("import runpy, signal, sys, time; from llmimg_jax.train import loop; "
              "signal.signal(signal.SIGINT, signal.default_int_handler); "
              "loop.train = lambda *a, **k: (print('building', flush=True), time.sleep(60)); "
              f"sys.argv = {args[1:]!r}; runpy.run_path(sys.argv[0], run_name='__main__')")
  proc = Proc([sys.executable, "-c", stand_in])
  proc.wait_for(lambda: "building" in proc.output, what="the stand-in train()")
  proc.popen.send_signal(sig)
  assert proc.finish(timeout=60) == status, proc.output[-3000:]
  assert "Traceback" not in proc.output, proc.output[-3000:]
  assert (f"train.py: error: {message}; the checkpoints in {tmp_path / 'run'}/checkpoints are "
          "kept: rerun the same command to resume from the latest.") in proc.output


def test_a_sigterm_with_jaxs_distributed_service_on_one_process_saves_at_a_step(tmp_path):
  """--coordinator_address with one process (or --distributed on a one-host TPU VM): SIGTERM
  belongs to JAX's preemption notifier, as on several hosts, and the loop stops at a step to
  save. train.py's before-the-loop handler took it there: exit 143, 'before a step could be
  saved', and the steps since the last checkpoint were lost."""
  from tests.train.cli_utils import _free_port
  args = train_args(tmp_path / "data", tmp_path / "run", "--num_processes=1", "--process_id=0",
                    f"--coordinator_address=127.0.0.1:{_free_port()}")
  # train() stands in for the loop: the preemption watch asked after every 0.1 s "step".
  stand_in = (
      "import runpy, sys, time\n"
      "from orbax.checkpoint._src.multihost import multihost\n"
      "from llmimg_jax.train import loop, preemption\n"
      "class Manager:\n"
      "  reached_preemption = staticmethod(multihost.reached_preemption)\n"
      "def train(*args, **kwargs):\n"
      "  with preemption.PreemptionWatch(Manager()) as watch:\n"
      "    print('training', flush=True)\n"
      "    while not watch.reached():\n"
      "      time.sleep(0.1)\n"
      "  print('stopped at a step', flush=True)\n"
      "loop.train = train\n"
      f"sys.argv = {args[1:]!r}; runpy.run_path(sys.argv[0], run_name='__main__')\n")
  proc = Proc([sys.executable, "-c", stand_in])
  proc.wait_for(lambda: "training" in proc.output, what="the stand-in train()")
  time.sleep(0.5)
  proc.popen.send_signal(signal.SIGTERM)
  assert proc.finish(timeout=60) == 0, proc.output[-3000:]
  assert "stopped at a step" in proc.output, proc.output[-3000:]


def _train_py_raising(args: list[str], module: str, error: str) -> Proc:
  """train.py started with `args`, its loop.train replaced by one raising `error` (an expression
  over llmimg_jax.train's `module`)."""
  stand_in = (f"import runpy, sys; from llmimg_jax.train import loop, {module}\n"
              "def train(*a, **k):\n"
              f"  raise {error}\n"
              f"loop.train = train; sys.argv = {args[1:]!r}\n"
              "runpy.run_path(sys.argv[0], run_name='__main__')")
  return Proc([sys.executable, "-c", stand_in])


def test_a_resume_at_disagreeing_points_is_status_3_and_one_line(shapes_data_dir, tmp_path):
  """restore_latest's ResumeDisagreesError (a position file of another step, hosts at different
  steps) ends train.py like a damaged checkpoint does: status 3 and its message, no traceback."""
  args = train_args(shapes_data_dir, tmp_path / "run")
  error = "resume_agree.ResumeDisagreesError('Checkpoint X is at step 4, but ...')"
  proc = _train_py_raising(args, "resume_agree", error)
  assert proc.finish(timeout=120) == 3, proc.output[-3000:]
  assert "Traceback" not in proc.output, proc.output[-3000:]
  assert "train.py: error: Checkpoint X is at step 4, but ..." in proc.output


def test_checkpoints_that_do_not_fit_the_config_exit_with_the_status_the_docstring_gives(
    shapes_data_dir, tmp_path):
  """ConfigMismatchError (another model in the workdir) exits 3, but train.py's docstring gave
  2 for config errors and 3 only for no readable checkpoint, one not written, or divergence."""
  import ast
  from pathlib import Path
  source = (Path(__file__).resolve().parents[2] / "train.py").read_text()
  doc = " ".join(ast.get_docstring(ast.parse(source)).split())
  three = re.search(r"status 2 \(config[^)]*\) or 3 \(([^)]*)\)", doc).group(1)
  assert "do not fit this run's config" in three, three
  args = train_args(shapes_data_dir, tmp_path / "run")
  proc = _train_py_raising(
      args, "checkpoint", "checkpoint.ConfigMismatchError('The checkpoints in X do not fit ...')")
  assert proc.finish(timeout=120) == 3, proc.output[-3000:]
  assert "train.py: error: The checkpoints in X do not fit ..." in proc.output


def test_the_first_line_counts_the_devices_by_kind_and_names_the_config(tmp_path):
  """train.py's first line listed every device (256 reprs on a TPU v5e-256 slice) and named no
  --config file (train(), which logs the start line, never sees its path)."""
  data = tmp_path / "data"  # not read: the stand-in train() trains nothing
  proc = Proc([sys.executable, "-c", _RECORDING_TRAIN,
               *train_args(data, tmp_path / "run", *flags({"train.steps": 7, "seed": 3}))[1:]])
  assert proc.finish(timeout=120) == 0, proc.output[-3000:]
  [line] = [line for line in proc.output.splitlines() if "] JAX " in line]
  assert line.endswith(f"] JAX {jax.__version__}: 1 process(es), 8 device(s) (8 cpu); config "
                       f"{cli_utils.CONFIG_FILE}:{data} with train.steps=7, seed=3."), line
