import errno
import importlib.util
import io
import logging
import re
import subprocess
import sys
from types import SimpleNamespace

import jax
import numpy as np
import pytest
import tqdm.std

from llmimg_jax.train.summaries import (describe_devices, log_end, log_start, logs_above,
                                        progress_bar, window_means)
from tests.train.cli_utils import ROOT, env
from tests.train.utils import _scalars

# A fresh process, as train.py starts: the pytest worker has imported torch already.
_WRITE = """
import sys
import numpy as np
from llmimg_jax.train import loop  # everything train.py imports before training
from llmimg_jax.train.summaries import summary_writer
writer = summary_writer(sys.argv[1], purge_step=1)
writer.add_scalar("loss", np.float32(0.25), 1)
writer.add_image("samples", np.zeros((8, 8, 3), np.uint8), 1, dataformats="HWC")
writer.close()
print("torch imported:", "torch" in sys.modules)
if sys.argv[2] == "1":
  import torch
  print("torch importable after:", torch.zeros(2).sum().item() == 0.0)
"""


def test_the_summary_writer_writes_events_without_importing_torch(tmp_path):
  has_torch = importlib.util.find_spec("torch") is not None
  out = subprocess.run([sys.executable, "-c", _WRITE, str(tmp_path), str(int(has_torch))],
                       env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "torch imported: False" in out.stdout, out.stdout
  if has_torch:  # hidden only while tensorboardX loads
    assert "torch importable after: True" in out.stdout, out.stdout
  assert _scalars(tmp_path, "loss") == {1: 0.25}


def test_flush_writes_every_event_added_so_far(tmp_path):
  """What a kill -9 right after flush() leaves: tensorboardX's own flush() missed the events its
  writer thread had not yet taken from its queue (an image added just before), and otherwise the
  file is flushed every 2 minutes."""
  import numpy as np
  from llmimg_jax.train.summaries import flush, summary_writer
  from tests.train.test_logs_at_stops import _tags
  writer = summary_writer(tmp_path, purge_step=1)
  for step in range(1, 4):
    writer.add_scalar("train/d_loss", 0.5, step)
    writer.add_image("samples", np.zeros((64, 64, 3), np.uint8), step, dataformats="HWC")
    flush(writer)
    assert _tags(tmp_path).count("samples") == step  # on disk, the writer still open
  writer.add_scalar("train/d_loss", 0.5, 4)  # the writer thread goes on after a flush
  writer.close()
  assert sorted(_scalars(tmp_path, "train/d_loss")) == [1, 2, 3, 4]


def test_a_nan_scalar_is_written_without_tensorboardx_s_warning(tmp_path, caplog):
  # A log step whose updates were all skipped wrote 8 lines 'NaN or Inf found in input tensor.'
  # around the loop's own warning that counts them.
  from llmimg_jax.train.summaries import summary_writer
  writer = summary_writer(tmp_path)
  with caplog.at_level(logging.WARNING):
    writer.add_scalar("train/d_loss", float("nan"), 1)
  writer.close()
  assert not caplog.records, caplog.text
  assert np.isnan(_scalars(tmp_path, "train/d_loss")[1])


def test_window_means_average_the_updates_made_over_the_steps_that_measured_each_metric():
  nan = float("nan")
  steps = [{"d_loss": 1.0, "gp": 0.5, "gp_measured": 1.0, "d_mismatch": 0.0,
            "d_mismatch_measured": 0.0, "finite": 1.0},
           {"d_loss": nan, "gp": nan, "gp_measured": 1.0, "d_mismatch": nan,  # skipped update
            "d_mismatch_measured": 1.0, "finite": 0.0},
           {"d_loss": 3.0, "gp": 0.0, "gp_measured": 0.0, "d_mismatch": 0.0,
            "d_mismatch_measured": 0.0, "finite": 1.0}]
  # The skipped step's NaN is left out of d_loss; gp is the one penalty step's; no step
  # measured d_mismatch; the flags are not metrics.
  assert window_means(steps) == {"d_loss": 2.0, "gp": 0.5, "finite": 1.0}
  # Every update skipped: the losses are NaN, not left out.
  means = window_means(steps[1:2])
  assert np.isnan(means["d_loss"]) and np.isnan(means["gp"]) and means["finite"] == 0.0


class _Stderr(io.StringIO):
  def __init__(self, terminal: bool):
    super().__init__()
    self.terminal = terminal

  def isatty(self) -> bool:
    return self.terminal


@pytest.mark.parametrize("terminal", [True, False])
def test_the_bar_in_a_log_file_is_redrawn_once_a_minute_not_at_every_step(terminal, monkeypatch):
  stderr, now = _Stderr(terminal), [1000.0]
  monkeypatch.setattr(sys, "stderr", stderr)
  monkeypatch.setattr(tqdm.std, "time", lambda: now[0])  # tqdm's clock
  bar = progress_bar(0, 600)
  for step in range(1, 601):  # 5 minutes of 0.5 s steps
    now[0] += 0.5
    bar.update(1)
    if step % 200 == 0:  # a log step's losses are drawn at once
      bar.set_postfix(d=f"{step}")
  bar.close()
  draws = stderr.getvalue().split("\r")[1:]
  assert "600/600" in draws[-1] and "d=600" in draws[-1]
  if terminal:  # every step, as tqdm draws anywhere by default
    assert len(draws) > 600, len(draws)
  else:  # a minute's 120 steps per draw, plus the three log steps, the start and the end
    assert 6 <= len(draws) <= 12, draws


@pytest.mark.parametrize("terminal", [True, False])
def test_the_bar_s_rate_leaves_out_the_first_step(terminal, monkeypatch):
  """The first (compiling) step was counted in the rate but not timed: the bar showed 2x the
  speed at the first log step, and an ETA too short by as much."""
  stderr, now = _Stderr(terminal), [1000.0]
  monkeypatch.setattr(sys, "stderr", stderr)
  monkeypatch.setattr(tqdm.std, "time", lambda: now[0])  # tqdm's clock
  bar = progress_bar(0, 10)
  now[0] += 30.0  # compiling
  bar.update_untimed()
  for _ in range(3):  # 2 steps per second
    now[0] += 0.5
    bar.update(1)
  assert bar.n == 4 and "4/10" in str(bar) and "2.00it/s" in str(bar), str(bar)
  assert "<00:03," in str(bar)  # 6 steps left


def test_the_bar_s_rate_leaves_out_saves_samples_and_evaluations(monkeypatch):
  """Only the first step was: a resumed run's last line drew 0.52 it/s where it trained at 7.6,
  counting the last sample grid's compile and the final save."""
  stderr, now = _Stderr(False), [1000.0]
  monkeypatch.setattr(sys, "stderr", stderr)
  monkeypatch.setattr(tqdm.std, "time", lambda: now[0])  # tqdm's clock
  bar = progress_bar(0, 10)
  bar.update_untimed()
  for step in range(1, 9):  # 2 steps per second, a grid every 4 steps
    now[0] += 0.5
    bar.update(1)
    if step % 4 == 0:
      with bar.off_the_clock():
        now[0] += 30.0
  bar.close()
  assert "9/10 [00:04<" in stderr.getvalue().split("\n")[-2] and "2.00it/s" in str(bar), (
      stderr.getvalue())
  monkeypatch.setattr(jax, "process_index", lambda: 1)  # a disabled bar (tqdm sets no clock)
  quiet = progress_bar(0, 10)
  with quiet.off_the_clock():  # an AttributeError on every host but 0
    quiet.update(1)


def _shown(text: str, terminal: bool) -> list[str]:
  """The lines of `text` as a terminal shows them (each \\r back to the line's start, where the
  next characters overwrite), or as a file's lines (less, grep)."""
  if not terminal:
    return text.split("\n")
  lines, column = [[]], 0
  for c in text:
    if c in "\r\n":
      column = 0
      lines += [[]] if c == "\n" else []
    else:
      lines[-1][column:column + 1] = [c]
      column += 1
  return ["".join(line).rstrip() for line in lines]


@pytest.mark.parametrize("terminal", [True, False])
def test_a_log_record_written_during_the_bar_starts_a_line_of_its_own(terminal, monkeypatch):
  """train.py logs through absl's handler, which tqdm's logging_redirect_tqdm does not know: a
  warning during training continued the bar's line."""
  from absl import logging as absl_logging
  stderr = _Stderr(terminal)
  monkeypatch.setattr(sys, "stderr", stderr)
  monkeypatch.setattr(absl_logging, "_warn_preinit_stderr", False)  # flags are not parsed here
  handler = absl_logging.ABSLHandler(absl_logging.PythonFormatter())
  monkeypatch.setattr(logging.getLogger(), "handlers", [handler])
  bar = progress_bar(0, 10)
  with logs_above(bar):
    bar.update(3)
    logging.getLogger("llmimg_jax.train.loop").warning("Step 3: 1 update(s) skipped.")
    bar.update(1)
    bar.close()
    logging.getLogger("llmimg_jax.train.loop").warning("After the bar.")
  assert logging.getLogger().handlers == [handler]  # as before the block
  lines = _shown(stderr.getvalue(), terminal)
  for message in ("Step 3: 1 update(s) skipped.", "After the bar."):
    [line] = [line for line in lines if message in line]
    assert re.fullmatch(rf"W\d{{4}} [\d:.]+ +\d+ test_summaries.py:\d+\] {re.escape(message)}",
                        line), lines
  bars = [line for line in lines if "train:" in line]
  assert bars and all(line.lstrip("\r").startswith("train:") for line in bars), lines
  assert "4/10" in bars[-1], lines  # drawn again after the record, closed at step 4


@pytest.mark.parametrize("terminal", [True, False])
def test_a_record_a_handler_writes_elsewhere_leaves_the_bar_s_stream_alone(terminal, tmp_path,
                                                                           monkeypatch):
  """A FileHandler beside the bar on stderr (logging.basicConfig(filename=...) around train()):
  each of its records ended the bar's line in a log file, or cleared and redrew it on a
  terminal."""
  stderr = _Stderr(terminal)
  monkeypatch.setattr(sys, "stderr", stderr)
  handler = logging.FileHandler(tmp_path / "run.log")
  monkeypatch.setattr(logging.getLogger(), "handlers", [handler])
  bar = progress_bar(0, 10)
  with logs_above(bar):
    bar.update(3)
    drawn = stderr.getvalue()
    logging.getLogger("llmimg_jax.train.loop").warning("Step 3: 1 update(s) skipped.")
    after = stderr.getvalue()
    bar.close()
  handler.close()
  assert after == drawn
  assert (tmp_path / "run.log").read_text() == "Step 3: 1 update(s) skipped.\n"


# absl's handler after use_absl_log_file (a program that logs to --log_dir): records go to the
# file, and with --alsologtostderr to stderr too, where the bar is drawn.
_ABSL_LOG_FILE = """
import logging, sys
from absl import flags, logging as absl_logging
from llmimg_jax.train.summaries import logs_above, progress_bar
flags.FLAGS(["train.py", *sys.argv[2:]])
handler = absl_logging.get_absl_handler()
handler.use_absl_log_file("train", sys.argv[1])
logging.getLogger().handlers[:] = [handler]
bar = progress_bar(0, 10)
with logs_above(bar):
  bar.update(3)
  logging.getLogger("llmimg_jax.train.loop").warning("Step 3: 1 update(s) skipped.")
  bar.update(1)
  bar.close()
"""


@pytest.mark.parametrize("also_to_stderr", [False, True])
def test_absl_s_records_in_a_log_file_end_the_bar_s_line_only_where_they_reach_it(
    also_to_stderr, tmp_path):
  out = subprocess.run(
      [sys.executable, "-c", _ABSL_LOG_FILE, str(tmp_path),
       *["--alsologtostderr"] * also_to_stderr],
      env=env(), cwd=ROOT, capture_output=True, timeout=300)  # bytes: each \r kept
  assert out.returncode == 0, out.stderr[-3000:]
  assert "] Step 3: 1 update(s) skipped." in (tmp_path / "train.INFO").read_text()
  lines = out.stderr.decode().split("\n")
  assert lines[-1] == "" and all(lines[:-1]), lines  # no empty line: one line end per line
  bars = [line for line in lines if "train:" in line]
  assert all(line.startswith("\rtrain:") for line in bars) and "4/10" in bars[-1], lines
  records = [line for line in lines if "Step 3" in line]
  assert len(records) == also_to_stderr and len(lines) == 2 + 2 * also_to_stderr, lines


def test_a_burst_of_records_in_a_log_file_leaves_no_bar_between_them(monkeypatch):
  """tqdm.write's way (as 3ccf3e8's): the bar redrawn after each record left a copy of it between
  each two records of a burst (an evaluation's lines, a checkpoint's messages) in a log file."""
  stderr = _Stderr(terminal=False)
  monkeypatch.setattr(sys, "stderr", stderr)
  monkeypatch.setattr(logging.getLogger(), "handlers", [logging.StreamHandler(stderr)])
  say = logging.getLogger("llmimg_jax.train.loop").warning
  bar = progress_bar(0, 10)
  with logs_above(bar):
    bar.update(3)
    for i in range(3):
      say("Record %d.", i)
    bar.update(1)  # no draw within a minute of the last
    say("Record 3.")
    bar.set_postfix(d="1.0")  # a log step's draw
    say("Record 4.")
    bar.close()
  lines = stderr.getvalue().split("\n")
  assert lines[-1] == "" and all(lines[:-1]), lines  # every line end ends a line
  assert [line.startswith("\rtrain:") for line in lines[:-1]] == [
      True, False, False, False, False, True, False, True], lines
  assert lines[1:5] == ["Record 0.", "Record 1.", "Record 2.", "Record 3."], lines
  assert "4/10" in lines[5] and "d=1.0" in lines[5] and "4/10" in lines[7], lines


def test_the_start_and_end_lines_name_the_run_s_paths_in_full(tmp_path, monkeypatch, caplog):
  """A relative --workdir (../runs/quick): the end line named the checkpoint in full (Orbax's
  path, '..' kept) but the sample grid, like the start line the workdir, relative to the
  directory the run was started in, which a log read later or elsewhere does not name."""
  import jax
  from llmimg_jax.train.config import base_config
  from llmimg_jax.train.mesh import make_mesh
  from llmimg_jax.train.workdir import local_workdir
  (tmp_path / "code").mkdir()
  monkeypatch.chdir(tmp_path / "code")
  workdir = local_workdir("../runs/quick")  # as train() takes --workdir=../runs/quick
  (workdir / "samples").mkdir(parents=True)
  for step in (2, 4):
    (workdir / "samples" / f"step_000000{step}.png").touch()
  # make_manager's directory.
  manager = SimpleNamespace(directory=workdir / "checkpoints", all_steps=lambda: [2, 4])
  for step in (2, 4):
    (manager.directory / str(step)).mkdir(parents=True)
  config = base_config()
  config.train.steps = 4
  with caplog.at_level(logging.INFO, "llmimg_jax"):
    log_start(config, workdir, make_mesh(jax.devices()[:1]), 0)
    log_end(workdir, manager, 4, 4, "done")
  start, end = caplog.messages
  assert f" in {tmp_path}/runs/quick: global batch " in start, start
  assert end == (f"Training ended at step 4 of 4 (done); latest checkpoint: "
                 f"{tmp_path}/runs/quick/checkpoints/4; latest sample grid: "
                 f"{tmp_path}/runs/quick/samples/step_0000004.png."), end


def test_the_end_line_names_the_latest_grid_past_step_9999999(tmp_path, caplog):
  """Grid names grow from 7 digits to 8 there: compared as strings, none was named."""
  from llmimg_jax.train.samples import grid_name
  from llmimg_jax.train.summaries import log_end
  (tmp_path / "samples").mkdir()
  for step in (9_000_000, 9_999_000, 10_000_600):
    (tmp_path / "samples" / grid_name(step)).touch()
  manager = SimpleNamespace(directory=tmp_path / "checkpoints", all_steps=lambda: [])
  with caplog.at_level(logging.INFO, "llmimg_jax"):
    log_end(tmp_path, manager, 10_000_500, 10_001_000, "stopped")
  assert caplog.messages[-1].endswith(f"latest sample grid: {tmp_path}/samples/step_9999000.png.")


def test_the_end_line_names_a_checkpoint_on_disk(tmp_path, caplog):
  """Orbax's latest step, once deleted by hand during the run (a failed save then ended it), was
  named as the latest checkpoint, beside train.py's error saying none is complete there."""
  from llmimg_jax.train.summaries import log_end
  (tmp_path / "checkpoints" / "4").mkdir(parents=True)
  (tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp-12").mkdir()  # the save cut short
  manager = SimpleNamespace(directory=tmp_path / "checkpoints", all_steps=lambda: [4, 6],
                            latest_step=lambda: 6)  # 6: deleted
  with caplog.at_level(logging.INFO, "llmimg_jax"):
    log_end(tmp_path, manager, 8, 20, "stopped by CheckpointSaveError")
    (tmp_path / "checkpoints" / "4").rmdir()
    log_end(tmp_path, manager, 8, 20, "stopped by CheckpointSaveError")
  assert [m.split("; ")[1] for m in caplog.messages[-2:]] == [
      f"latest checkpoint: {tmp_path}/checkpoints/4", "latest checkpoint: none"]


def test_the_devices_are_counted_by_kind_not_listed():
  """train.py's first line listed jax.devices(): 256 device reprs on a TPU v5e-256 slice."""
  tpu = [SimpleNamespace(platform="tpu", device_kind="TPU v5 lite")] * 256
  gpu = [SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")] * 8
  a100 = [SimpleNamespace(platform="gpu", device_kind="NVIDIA A100-SXM4-40GB")] * 2
  assert describe_devices(tpu) == "256 TPU v5 lite"
  assert describe_devices(gpu[:4] + a100 + gpu[4:]) == (
      "8 NVIDIA H100 80GB HBM3 (gpu), 2 NVIDIA A100-SXM4-40GB (gpu)")
  assert describe_devices([SimpleNamespace(platform="cpu", device_kind="cpu")] * 8) == "8 cpu"


class _FullDisk(_Stderr):
  def write(self, text: str) -> int:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("terminal", [True, False])
def test_a_bar_that_cannot_be_written_stops_drawing_and_the_steps_go_on(terminal, monkeypatch,
                                                                         caplog):
  """A full disk under the log file (or a pipe without its reader): the first draw raised."""
  monkeypatch.setattr(sys, "stderr", _FullDisk(terminal))
  bar = progress_bar(0, 4)
  with logs_above(bar):
    for step in range(1, 5):
      bar.update(1)
      bar.set_postfix(d=f"{step}")
      logging.getLogger("llmimg_jax").info("step %d", step)
  bar.close()
  assert bar.n == 4
  assert [r.message for r in caplog.records if "progress bar" in r.message] == [
      "The training progress bar is not drawn from now on: writing it failed ([Errno 28] No space "
      "left on device)."]
