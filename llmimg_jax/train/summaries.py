"""What a run shows: TensorBoard event files through tensorboardX (no TensorFlow), without
importing PyTorch, the progress bar with the log records written above it, and the log's first
and last lines of a run."""
from __future__ import annotations

import collections
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from absl import logging as absl_logging
import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from llmimg_jax import cli, console
from llmimg_jax.train.step import MEASURED

log = logging.getLogger(__name__)

# tensorboardX warns 'NaN or Inf found in input tensor.' for each such scalar, naming none: the
# loop logs NaN losses for a window of skipped updates, which its own warning counts.
cli.drop_log_records("tensorboardX.x2num", lambda text: "NaN or Inf found in input" in text)

# A bar written to a file (a batch job's log) rather than a terminal: tqdm's redraws (~90 bytes
# each, up to 10 a second: one per step at shapes_quick's speed) at most once a minute, besides
# the redraw of each log step's losses.
_LOG_FILE_REDRAW_S = 60.0


def summary_writer(logdir: str | Path, purge_step: int | None = None) -> Any:
  """tensorboardX's SummaryWriter for `logdir`.

  tensorboardX imports torch wherever it is installed (the test extra, most ML machines) only to
  accept torch tensors; we log numpy. That import cost a train.py start ~1.3 s and ~200 MB
  (`python -c "import tensorboardX"`: 3.4 s and 231 MB with torch 2.13 on a busy 2-core VM, 0.3 s
  and 36 MB without), so torch is hidden from it while it loads and importable again after.
  """
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    if hide and sys.modules.get("torch", ()) is None:
      del sys.modules["torch"]
  return SummaryWriter(str(logdir), purge_step=purge_step)


def flush(writer: Any | None) -> None:
  """Every event added to `writer` (None: no writer, on hosts other than 0) so far, written and
  flushed to its file. The loop flushes when it saves a checkpoint and after samples and
  evaluations: a crash (kill -9, OOM, a lost host) would lose up to 2 minutes of them, and a run
  resumed from a checkpoint of those steps does not log them again, a gap in every curve.

  tensorboardX hands events to a writer thread through a queue and flushes the file every 2
  minutes; its flush() writes out only what that thread has taken from the queue so far (an image
  added just before was not in it). Here the thread is stopped, which it does after writing every
  event queued before, and a new one started on the same queue and file (as its reopen() does).
  """
  if writer is None:
    return
  for file_writer in (getattr(writer, "all_writers", None) or {}).values():
    events = getattr(file_writer, "event_writer", None)  # tensorboardX's EventFileWriter
    worker = getattr(events, "_worker", None)
    if worker is not None and not getattr(events, "_closed", True):
      worker.stop()  # a shutdown mark after the queued events; joins the thread
      # pylint: disable=protected-access
      events._worker = type(worker)(events._event_queue, events._ev_writer, events._flush_secs)
      events._worker.start()
  writer.flush()


def window_means(steps: list[dict[str, Any]]) -> dict[str, float]:
  """Each metric's mean over the updates made among `steps` (one dict of scalars per step, the
  same keys in each, with "finite" 0 for a skipped update), over those that measured it (KEY +
  MEASURED); one that none measured is left out, and so are the MEASURED flags. If every update
  was skipped, the same means over every step (NaN for the losses)."""
  made = [m for m in steps if m["finite"]] or steps
  means = {}
  for key in steps[-1]:
    if key.endswith(MEASURED):
      continue
    values = [m[key] for m in made if m.get(key + MEASURED, 1.0)]
    if values:
      means[key] = float(np.mean(np.asarray(values, np.float64)))
  return means


class _Bar(tqdm):
  """tqdm naming the stream it draws on, and whether its last draw there left a line open, for
  the log records written around it. A draw that fails (a pipe without its reader, a full disk)
  ends the bar's output, not the run (console.bar_file)."""

  def __init__(self, *args: Any, file: Any, **kwargs: Any):
    self.stream, self.line_open = file, False
    super().__init__(*args, file=console.bar_file("training", file), **kwargs)

  def display(self, *args: Any, **kwargs: Any) -> Any:  # every draw
    self.line_open = True
    return super().display(*args, **kwargs)

  def update_untimed(self) -> None:
    """One step counted but left out of the rate and ETA (the first: compiling, restoring); the
    clock restarts here. tqdm's rate is the steps since `initial` over the time since its start,
    or once it drew, a mean of the steps over the time between draws: both begin after it."""
    self.unpause()
    self.update(1)
    self.initial = self.last_print_n = self.n

  @contextlib.contextmanager
  def off_the_clock(self) -> Iterator[None]:
    """Work between steps (saves, sample grids, evaluations) left out of the rate, ETA and
    elapsed time, as of the run's img/s: the last line's rate counted the last grid's compile and
    the final save (a resumed run's 7.6 steps/s drawn as 0.52)."""
    if self.disable:  # not host 0: no clock (tqdm sets none)
      yield
      return
    start = self._time()
    try:
      yield
    finally:
      off = self._time() - start
      self.start_t += off
      self.last_print_t += off


def progress_bar(start: int, steps: int) -> tqdm:
  """Host 0's bar of the training steps, from `start` (a resumed run) to `steps`, on stderr."""
  redraw = {} if sys.stderr.isatty() else {"mininterval": _LOG_FILE_REDRAW_S,
                                           "maxinterval": _LOG_FILE_REDRAW_S}
  return _Bar(initial=start, total=steps, desc="train", disable=jax.process_index() != 0,
              dynamic_ncols=True, file=sys.stderr, **redraw)


def _writes_to(handler: logging.Handler, record: logging.LogRecord, stream: Any) -> bool:
  """Whether `handler` writes `record` on `stream`: a StreamHandler on its own; absl's handler on
  its Python handler's (a file after use_absl_log_file), and on sys.stderr where absl's flags
  send the record there too (as absl's PythonHandler.emit decides)."""
  handler = getattr(handler, "python_handler", handler)  # absl's ABSLHandler
  if isinstance(handler, absl_logging.PythonHandler):
    flags = absl_logging.FLAGS
    if not flags.is_parsed() or flags["logtostderr"].value:  # stderr alone
      return stream is sys.stderr
    threshold = absl_logging.converter.string_to_standard(flags["stderrthreshold"].value)
    if stream is sys.stderr and (flags["alsologtostderr"].value or record.levelno >= threshold):
      return True
  return isinstance(handler, logging.StreamHandler) and handler.stream is stream


class _AboveTheBar(logging.Handler):
  """`handler` writing each record on a line of its own while `bar` is drawn: on a terminal the
  bar is cleared first and redrawn after; in a file (where the bar's draws share one line) that
  line is ended, and the bar is drawn again at its next redraw (a log step's, or within a
  minute): once after a burst of records, not a copy between each. A record the handler writes
  elsewhere (a log file) leaves the bar alone."""

  def __init__(self, handler: logging.Handler, bar: _Bar):
    super().__init__(handler.level)
    self.handler, self.bar = handler, bar

  def handle(self, record: logging.LogRecord) -> bool:
    if (self.bar.disable or not self.handler.filter(record)  # closed, or a record it drops
        or not _writes_to(self.handler, record, self.bar.stream)):
      return self.handler.handle(record)
    with self.bar.get_lock():
      if not self.bar.fp.isatty():
        if self.bar.line_open:
          self.bar.fp.write("\n")
          self.bar.line_open = False
        return self.handler.handle(record)
      self.bar.clear(nolock=True)
      try:
        return self.handler.handle(record)
      finally:
        self.bar.refresh(nolock=True)


@contextlib.contextmanager
def logs_above(bar: tqdm) -> Iterator[None]:
  """In the block, each record the root logger's handlers write on the stream of `bar` (one of
  progress_bar's) starts a line of its own instead of continuing the bar's (tqdm's
  logging_redirect_tqdm knows plain StreamHandlers, not absl's)."""
  root = logging.getLogger()
  if not bar.disable:  # host 0's
    root.handlers[:] = [_AboveTheBar(h, bar) for h in root.handlers]
  try:
    yield
  finally:
    root.handlers[:] = [h.handler if isinstance(h, _AboveTheBar) else h for h in root.handlers]


def describe_devices(devices: Sequence[jax.Device]) -> str:
  """How many of `devices` are of each kind (and platform, where the kind does not name it):
  '256 TPU v5 lite', '8 NVIDIA H100 80GB HBM3 (gpu)', '8 cpu'; not a repr of each device."""
  kinds = collections.Counter((d.device_kind, d.platform) for d in devices)
  return ", ".join(f"{n} {kind}" + ("" if platform in kind.lower() else f" ({platform})")
                   for (kind, platform), n in kinds.items())


def log_start(config: ml_collections.ConfigDict, workdir: Path, mesh: jax.sharding.Mesh,
              start: int) -> None:
  """Host 0's line of what the run trains, on which devices, from which step to which; `workdir`
  in full (local_workdir's), as every path in the log."""
  d, t = config.data, config.train
  data = {"captioned_shapes": f"{d.name}/{d.config}", "captioned_folder": f"{d.name} {d.folder}"}
  log.info("Training %s at %dpx from step %d to %d in %s: global batch %d over %d %s device(s) "
           "on %d host(s).", data.get(d.name, d.name), config.model.resolution, start, t.steps,
           workdir, t.batch_size, mesh.size, mesh.devices.flat[0].device_kind, jax.process_count())


def log_end(workdir: Path, manager: Any, done: int, steps: int, why: str) -> None:
  """Host 0's last line: the step the run ended at and why, its latest checkpoint (`manager`'s,
  closed) and sample grid, in full as the workdir (local_workdir's) they are in."""
  # Orbax's list of its saves, as on disk: not one deleted since (by hand) or cut short.
  latest = max((step for step in manager.all_steps() if (manager.directory / str(step)).exists()),
               default=None)
  # By number: grid_name's 7 digits grow to 8 past step 9,999,999, and such names sort apart.
  grids = {int(p.stem[5:]): p for p in (workdir / "samples").glob("step_*.png")
           if p.stem[5:].isdecimal()}
  grid = grids.get(max((step for step in grids if step <= done), default=-1))
  checkpoint = "none" if latest is None else manager.directory / str(latest)
  log.info("Training ended at step %d of %d (%s); latest checkpoint: %s; latest sample grid: %s.",
           done, steps, why, checkpoint, "none" if grid is None else grid)
