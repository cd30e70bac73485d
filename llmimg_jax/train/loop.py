"""The training loop: one jitted step over a data-parallel mesh of every device of every host."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from llmimg_jax import cpus
from llmimg_jax.data.global_batch import to_global_batch
from llmimg_jax.data.pipeline import (close_iterator, is_built, load_source, make_iterator,
                                      paths_in_full)
from llmimg_jax.eval import in_training
from llmimg_jax.train import checkpoint, hosts, resume
from llmimg_jax.train.preemption import PreemptionWatch
from llmimg_jax.train.same_config import check_same_config
from llmimg_jax.train.config import due, validate, warn_of_unused_text_keys
from llmimg_jax.train.mesh import compiler_options, make_mesh
from llmimg_jax.train.state import Models, TrainState, build_models, build_text, init_state
from llmimg_jax.train.samples import SampleWriter
from llmimg_jax.train.step import train_step
from llmimg_jax.train.summaries import (
    flush as flush_events, log_end, log_start, logs_above, progress_bar, summary_writer,
    window_means)
from llmimg_jax.train.workdir import (WorkdirClaim, check_workdir_free,
                                     check_workdir_outside_data, check_workdir_writable,
                                     checkpoint_saving, local_workdir, workdir_claimed)

log = logging.getLogger(__name__)


class DivergenceError(RuntimeError):
  pass


class TextCheckpointError(ValueError):
  """config.text.checkpoint could not be loaded (missing or damaged weights or tokenizer)."""


class DataNotSharedError(ValueError):
  """Hosts of a multi-host run do not see the dataset host 0 built."""


def _check_data_shared(data_cfg: ml_collections.ConfigDict) -> None:
  """After host 0 built the dataset, every host must read that build: with a data_dir on each
  host's own disk (the default, ~/tensorflow_datasets) each would build its own copy, for hours
  (COCO), while host 0 waits at the next barrier and gives up."""
  try:
    built = is_built(data_cfg)
  except ValueError:  # e.g. a captioned_folder that this host neither has nor sees built
    built = False
  missing = hosts.failed_hosts(built)
  if missing:
    raise DataNotSharedError(
        f"Host(s) {missing} do not see the {data_cfg.name} dataset that host 0 built in "
        f"data.data_dir={data_cfg.data_dir!r}: every host reads host 0's build, so data.data_dir "
        "(or TFDS_DATA_DIR) must be a location all hosts share, e.g. a gs:// bucket or a "
        "shared mount.")


def _build_on_host_0(data_cfg: ml_collections.ConfigDict):
  """Host 0 builds (or opens) the train split while the others wait; then every host checks
  that it sees that build. A failure on host 0 stops every host at once, not at a timeout."""
  source = hosts.on_host_0(
      lambda: load_source(data_cfg, "train"), "data_built",
      f"build or open the {data_cfg.name} dataset", DataNotSharedError, timeout_s=6 * 3600)
  _check_data_shared(data_cfg)
  return source


# On a one-device CPU mesh with several cores the step runs G and D on this many batch slices,
# which XLA:CPU runs concurrently: the 64px benchmark step -3% on the 2-core dev VM, +1.5% when
# pinned to one core (benchmarks/RESULTS.md).
CPU_BATCH_CHUNKS = 2


def batch_chunks(mesh: jax.sharding.Mesh) -> int:
  """train_step's batch_chunks: CPU_BATCH_CHUNKS on a one-device CPU mesh, else 1 (on several
  devices a slice of the batch would span devices; on GPU/TPU it only adds kernel launches)."""
  one_cpu = mesh.devices.size == 1 and mesh.devices.flat[0].platform == "cpu"
  return CPU_BATCH_CHUNKS if one_cpu and cpus.usable_cpus() > 1 else 1


def jit_train_step(models: Models, mesh: jax.sharding.Mesh):
  replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  step = functools.partial(train_step, models, batch_chunks=batch_chunks(mesh))
  return jax.jit(step, in_shardings=(replicated, batch),
                 out_shardings=(replicated, replicated), donate_argnums=0,
                 compiler_options=compiler_options(mesh))


@functools.lru_cache(maxsize=1)  # train()'s eval_shape and fresh state: one trace, not two
def _jit_init_state(models: Models, mesh: jax.sharding.Mesh):
  return jax.jit(functools.partial(init_state, models), out_shardings=NamedSharding(mesh, P()))


def create_state(models: Models, mesh: jax.sharding.Mesh, seed: int, text_params=None, *,
                 abstract: bool = False) -> TrainState:  # abstract: its ShapeDtypeStructs only
  init = _jit_init_state(models, mesh)
  return (init.eval_shape if abstract else init)(jax.random.PRNGKey(seed), text_params)


class _StepClock:
  """Training steps and their seconds since the last `lap`, off the clock while stopped (for
  checkpoint saves, sample grids, evaluation) and before the first step finished (compiling)."""

  def __init__(self):
    self.steps, self.seconds, self.since = 0, 0.0, None

  def start(self) -> None:
    if self.since is None:
      self.since = time.perf_counter()

  def stop(self, state: TrainState) -> None:
    jax.block_until_ready(state)  # the steps dispatched so far, done
    if self.since is not None:
      self.seconds, self.since = self.seconds + time.perf_counter() - self.since, None

  def lap(self) -> float | None:
    """Steps per second since the last lap (the caller has synced with the last step)."""
    now = time.perf_counter()
    seconds = self.seconds + (now - self.since if self.since is not None else 0.0)
    rate = self.steps / seconds if self.steps and seconds > 0 else None
    self.steps, self.seconds = 0, 0.0
    self.since = now if self.since is not None else None
    return rate


@dataclasses.dataclass(frozen=True)
class _Run:
  """What train() sets up for its steps: where they are saved, read from and logged."""
  config: ml_collections.ConfigDict
  workdir: Path
  mesh: jax.sharding.Mesh
  manager: ocp.CheckpointManager
  data_iter: Any
  writer: Any  # TensorBoard's, on host 0 only (else None)
  samples: SampleWriter
  evaluate: in_training.TrainingEvaluator | None
  claim: WorkdirClaim


def _save(run: _Run, state: TrainState, step: int) -> None:
  run.claim.keep()  # not two runs saving there
  with checkpoint_saving(run.manager.directory):
    checkpoint.save(run.manager, step, state, run.data_iter, run.config)


def _evaluate(run: _Run, state: TrainState, step: int, saved: bool) -> None:
  """Evaluates `step`; a new best's checkpoint is kept: saved if it was not, else the former's
  deleted (unless among the latest)."""
  former_best = run.evaluate.best_step
  run.evaluate(state, step, run.writer)
  if run.evaluate.best_step == step and saved and former_best is not None:
    checkpoint.drop_former_best(run.manager, former_best, run.config.train.keep_checkpoints)
  if run.evaluate.best_step == step and not saved:  # kept beside the latest (make_manager)
    _save(run, state, step)


def _log_metrics(fetched: list[dict[str, np.ndarray]], done: int, clock: _StepClock, bar: tqdm,
                 writer, t: ml_collections.ConfigDict, checkpoints: Path) -> None:
  """The steps' metrics since the last log, averaged over the updates made, to the progress bar
  and TensorBoard; DivergenceError after t.max_bad_steps non-finite updates in a row."""
  # The longest streak of skipped updates since the last log, even one that has ended.
  streak = max(int(m.pop("bad_steps")) for m in fetched)
  # Losses and norms of the updates made (a skipped one's are NaN); NaN if all skipped.
  scalars = window_means(fetched)
  scalars["finite"] = float(np.mean([m["finite"] for m in fetched]))
  if steps_per_sec := clock.lap():  # None when only the first step ran
    scalars["images_per_sec"] = t.batch_size * steps_per_sec
  scalars["skipped_updates"] = float(sum(1 - m["finite"] for m in fetched))
  rate = scalars.get("images_per_sec")
  bar.set_postfix(d=f"{scalars['d_loss']:.3f}", g=f"{scalars['g_loss']:.3f}",
                  img_s="-" if rate is None else f"{rate:.0f}")
  if writer is not None:
    for k, v in scalars.items():
      writer.add_scalar(f"train/{k}", v, done)
  if scalars["skipped_updates"]:
    log.warning("Step %d: %d update(s) skipped for non-finite losses or gradients.", done,
                scalars["skipped_updates"])
  if streak >= t.max_bad_steps:
    raise DivergenceError(
        f"{streak} consecutive non-finite updates by step {done}: the run diverged. The last "
        f"good checkpoint in {checkpoints} is intact; lower the learning rates "
        "(config.train.lr_g/lr_d) or enable config.train.grad_clip.")


def _load_text(config: ml_collections.ConfigDict):
  """build_text(config); TextCheckpointError naming config.text.checkpoint if it fails."""
  try:  # train.py checked only that the checkpoint's directory exists (or downloads)
    return build_text(config)
  except (ValueError, OSError, TypeError, ImportError) as e:  # the loader names file and fix
    raise TextCheckpointError(f"config.text.checkpoint={config.text.checkpoint!r} could not be "
                              f"loaded: {e}") from e


def _restore_or_init(manager: ocp.CheckpointManager, models: Models, mesh: jax.sharding.Mesh,
                     config: ml_collections.ConfigDict, pretrained_text, data_iter,
                     start_fresh_if_corrupt: bool) -> tuple[TrainState, bool]:
  """The newest checkpoint's state (`data_iter` restored in place), else a fresh one; and whether
  it was restored."""
  abstract = create_state(models, mesh, config.seed, pretrained_text, abstract=True)  # no compile
  restored = checkpoint.restore_latest(manager, abstract, data_iter,
                                      start_fresh_if_corrupt=start_fresh_if_corrupt, config=config)
  if restored is None:
    return create_state(models, mesh, config.seed, pretrained_text), False
  log.info("Resumed from %s at step %d.", manager.directory, int(restored.step))
  return restored, True


def train(config: ml_collections.ConfigDict, workdir: str | Path, devices=None, *,
          start_fresh_if_corrupt: bool = False) -> TrainState:
  """Trains to config.train.steps, resuming from workdir; `devices` defaults to all of them.

  Resumes from the newest checkpoint that restores (damaged ones are moved aside; with none
  readable it raises CorruptCheckpointError unless `start_fresh_if_corrupt`); one already at
  config.train.steps is returned as restored, config.json untouched and no evaluator set up,
  unless its last sample grid or evaluation is missing (a kill during them): made then. A resumed
  run makes those of the step it resumes at, if missing, before it trains. A workdir inside a
  captioned_folder's folder is refused (ValueError), and so is a resume whose text.checkpoint
  holds another tokenizer or T5 config than WORKDIR/text (ConfigMismatchError), a workdir
  another train() or train.py trains in (WorkdirInUseError), and a WORKDIR/best.json that cannot
  be read (BestFileError: the checkpoint it keeps would be deleted).
  SIGTERM/SIGINT finish the current step, save and return early (every host at the same step).
  """
  workdir = local_workdir(workdir)
  mesh = make_mesh(devices)
  validate(config, mesh.size)  # first: the checks below read the config (a dict had no .data)
  warn_of_unused_text_keys(config)  # here, not in validate(), which train.py calls first too
  check_workdir_outside_data(workdir, config.data)
  check_same_config(config, workdir)
  check_workdir_writable(workdir)
  check_workdir_free(workdir)
  config = copy.copy(config)  # the caller's keeps its data paths as given
  config.data = paths_in_full(config.data)
  tokenizer, t5_config, pretrained_text = _load_text(config)
  models = build_models(config, t5_config)
  source = _build_on_host_0(config.data) if jax.process_count() > 1 else None
  data_iter = make_iterator(
      config.data, tokenizer, batch_size_per_host=config.train.batch_size // jax.process_count(),
      seed=config.seed, source=source)
  run = None
  try:
    with workdir_claimed(workdir) as claim, contextlib.ExitStack() as unless_training:
      manager = checkpoint.make_manager(workdir, config)
      unless_training.callback(manager.close)  # on an error or a return before training
      resume.check_best_file(workdir)  # before a restore (minutes at scale)
      state, resumed = _restore_or_init(manager, models, mesh, config, pretrained_text,
                                        data_iter, start_fresh_if_corrupt)
      start = int(state.step)
      resume.tidy_best(workdir, manager, start, config)
      grid_unmade, eval_unmade = resume.unmade(workdir, start, config)
      # A finished run returns before config.json, TensorBoard and the evaluator's setup.
      if resume.nothing_to_do(workdir, start, config, grid_unmade, eval_unmade):
        return state
      if resumed:  # the run's tokenizer and T5 config, which sampling reads, are those it trains on
        resume.check_text_files(workdir, config, tokenizer, t5_config)
      if start < config.train.steps:
        resume.write_run_files(workdir, config, tokenizer, t5_config, fresh=not resumed)
      # Steps past `start` logged by an earlier run (a fallback past a damaged checkpoint, a fresh
      # start over an old run) are hidden by TensorBoard, not drawn under this run's.
      writer = (summary_writer(workdir / "tensorboard", purge_step=start + 1)
                if jax.process_index() == 0 else None)
      if writer is not None:
        unless_training.callback(writer.close)
      samples = SampleWriter(models, tokenizer, config, workdir, mesh)  # first: a prompt too long
      evaluate = (in_training.TrainingEvaluator(models, tokenizer, config, workdir, mesh=mesh)
                  if in_training.enabled(config) else None)
      step_fn = jit_train_step(models, mesh)
      run = _Run(config, workdir, mesh, manager, data_iter, writer, samples, evaluate, claim)
      unless_training.pop_all()  # the run's to close now: _train_steps does, after its last save
      return _train_steps(run, state, start, step_fn, grid_unmade, eval_unmade)
  finally:
    if run is None:  # else _train_steps closed it, as signals wait for its last save
      close_iterator(data_iter)  # its workers' buffered batches would be reported leaked


def _train_steps(run: _Run, state: TrainState, start: int, step_fn, grid_unmade: bool,
                 eval_unmade: bool) -> TrainState:
  """Steps from `start` to config.train.steps (first the unmade grid and evaluation of `start`),
  or to a SIGTERM/SIGINT; then the last save and the end of the logs, whatever ended them."""
  t = run.config.train
  if jax.process_index() == 0:
    log_start(run.config, run.workdir, run.mesh, start)
  done, ended = start, "done"
  pending = []  # device metrics since the last log, fetched together to avoid a sync per step
  clock = _StepClock()
  bar = progress_bar(start, t.steps)
  with PreemptionWatch(run.manager) as watch, logs_above(bar):
    try:
      stopped = _make_unmade(run, state, start, grid_unmade, eval_unmade, watch)
      for step in range(start, start if stopped else t.steps):
        batch = to_global_batch(next(run.data_iter), run.mesh)
        state, metrics = step_fn(state, batch)
        pending.append(metrics)
        done = step + 1
        if step == start:  # compiling (and restoring) is not training throughput, nor the bar's
          jax.block_until_ready(metrics)
          clock.start()
          bar.update_untimed()  # rate and ETA from the steps after this one
        else:
          clock.steps += 1
          bar.update(1)
        if _after_step(run, state, done, pending, clock, bar, watch):
          break
      if done < t.steps:  # a SIGTERM/SIGINT (at the last step the run is complete)
        ended = f"stopped by {watch.description}"
    except BaseException as e:  # the end line names it, train.py (or the caller) reports it
      ended = f"stopped by {type(e).__name__}"
      raise
    finally:  # also on an error (e.g. DivergenceError): the last save, logs and bar end cleanly
      _finish(run, watch, bar, done, ended)
  return state


def _make_unmade(run: _Run, state: TrainState, start: int, grid_unmade: bool, eval_unmade: bool,
                 watch: PreemptionWatch) -> bool:
  """The sample grid and evaluation of `start` that a kill during them lost; whether a signal
  then stops the run before its first step (logged)."""
  if grid_unmade:
    run.samples(state, start, run.writer)
  # A signal during those (one process; JAX's sync manager agrees on a step): no step since
  # the checkpoint to save; the evaluation (left to the rerun) or compiling the first step
  # would outlast a preemption's grace period.
  skip_eval = bool(eval_unmade and watch.signal and not watch.synced)
  if eval_unmade and not skip_eval:
    _evaluate(run, state, start, True)
  left = ["the step's evaluation"] * skip_eval + ["the first step"] * (
      start < run.config.train.steps)
  if stopped := bool(watch.signal and not watch.synced and left):
    log.warning("Stopped by %s before %s; rerun the same command to resume.",
                watch.description, " and ".join(left))
  return stopped


def _after_step(run: _Run, state: TrainState, done: int, pending: list, clock: _StepClock,
                bar: tqdm, watch: PreemptionWatch) -> bool:
  """Logs, saves, samples and evaluates what is due after step `done`; whether a SIGTERM/SIGINT
  stops the run here (saved)."""
  t = run.config.train
  # SIGTERM/SIGINT: save now, stop (the same step everywhere); at the last step the run is
  # complete, so it ends as usual (its samples and evaluation are made now, not by a rerun).
  stop = watch.reached() and done < t.steps
  saved = due(done, t.ckpt_every, t.steps) or stop
  sample_now = due(done, t.sample_every, t.steps)
  eval_now = run.evaluate is not None and due(done, run.config.eval.every, t.steps)
  # The steps since the last log, logged before a checkpoint too (an evaluation's new best is
  # one): a rerun after a crash resumes after it, and would never log them.
  if due(done, t.log_every, t.steps) or saved or eval_now:
    _log_metrics(jax.device_get(pending), done, clock, bar, run.writer, t, run.manager.directory)
    pending.clear()
  if saved or sample_now or eval_now:  # not training: off the clock, and the bar's
    clock.stop(state)
  with bar.off_the_clock():
    if saved:  # before sampling and evaluation, whose errors would lose it
      _save(run, state, done)
      flush_events(run.writer)  # the steps it holds are not logged again after a crash
    if stop:  # the grace period of a preemption is short: samples and evaluation on resuming
      log.warning("Stopped by %s after step %d with a checkpoint; rerun the same command to "
                  "resume.", watch.description, done)
      return True
    if sample_now:
      run.samples(state, done, run.writer)
    if eval_now:
      _evaluate(run, state, done, saved)
    if sample_now or eval_now:
      flush_events(run.writer)
  clock.start()
  return False


def _finish(run: _Run, watch: PreemptionWatch, bar: tqdm, done: int, ended: str) -> None:
  """The last save, the logs' end line, then the input pipeline and TensorBoard closed."""
  watch.finishing = True  # a signal now waits for the last save instead of cutting it
  bar.close()
  try:
    with checkpoint_saving(run.manager.directory):
      run.manager.close()  # waits for the last save first
    if jax.process_index() == 0:
      log_end(run.workdir, run.manager, done, run.config.train.steps, ended)
  finally:
    close_iterator(run.data_iter)  # its workers' buffered batches would be reported leaked
    if run.writer is not None:
      run.writer.close()
