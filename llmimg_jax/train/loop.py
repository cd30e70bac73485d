"""The training loop: one jitted step over a data-parallel mesh of every device of every host."""
from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from llmimg_jax import cli
from llmimg_jax.data.global_batch import to_global_batch
from llmimg_jax.data.pipeline import close_iterator, is_built, load_source, make_iterator
from llmimg_jax.eval import in_training
from llmimg_jax.train import checkpoint
from llmimg_jax.train.preemption import PreemptionWatch
from llmimg_jax.train.same_config import check_same_config
from llmimg_jax.train.config import due, validate
from llmimg_jax.train.config_values import config_diff, config_values, describe_changes
from llmimg_jax.train.mesh import make_mesh
from llmimg_jax.train.state import (
    Models, TrainState, build_models, build_text, init_state, save_text_files)
from llmimg_jax.train.samples import SampleWriter, grid_name
from llmimg_jax.train.step import train_step
from llmimg_jax.train.summaries import (
    flush as flush_events, log_end, log_start, logs_above, progress_bar, summary_writer,
    window_means)
from llmimg_jax.train.workdir import check_workdir_writable, checkpoint_saving, local_workdir

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
  missing = [i for i, ok in enumerate(checkpoint.host_flags(built)) if not ok]
  if missing:
    raise DataNotSharedError(
        f"Host(s) {missing} do not see the {data_cfg.name} dataset that host 0 built in "
        f"data.data_dir={data_cfg.data_dir!r}: every host reads host 0's build, so data.data_dir "
        "(or TFDS_DATA_DIR) must be a location all hosts share, e.g. a gs:// bucket or a "
        "shared mount.")


def _build_on_host_0(data_cfg: ml_collections.ConfigDict):
  """Host 0 builds (or opens) the train split while the others wait; then every host checks
  that it sees that build. A failure on host 0 stops every host at once, not at a timeout."""
  source = checkpoint.on_host_0(
      lambda: load_source(data_cfg, "train"), "data_built",
      f"build or open the {data_cfg.name} dataset", DataNotSharedError, timeout_s=6 * 3600)
  _check_data_shared(data_cfg)
  return source


# XLA:CPU hands dots and convolutions to YNNPACK; its convolution path runs the weight gradients
# of 3x3 convs several times slower than XLA's own (benchmarks/RESULTS.md), so the train step
# keeps YNNPACK for dots only.
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def _cpu_options_supported() -> bool:
  try:
    jax.jit(lambda x: x + 1, compiler_options=_CPU_OPTIONS).lower(np.float32(0)).compile()
    return True
  except jax.errors.JaxRuntimeError:  # an XLA without this (experimental) option
    log.info("XLA:CPU has no %s; the train step compiles with the defaults.", list(_CPU_OPTIONS))
    return False


def compiler_options(mesh: jax.sharding.Mesh) -> dict[str, str]:
  """XLA options for the train step: `_CPU_OPTIONS` on CPU meshes where XLA knows them, else {}."""
  on_cpu = all(d.platform == "cpu" for d in mesh.devices.flat)
  return dict(_CPU_OPTIONS) if on_cpu and _cpu_options_supported() else {}


# On a one-device CPU mesh with several cores the step runs G and D on this many batch slices,
# which XLA:CPU runs concurrently: the 64px benchmark step -3% on the 2-core dev VM, +1.5% when
# pinned to one core (benchmarks/RESULTS.md).
CPU_BATCH_CHUNKS = 2


def batch_chunks(mesh: jax.sharding.Mesh) -> int:
  """train_step's batch_chunks: CPU_BATCH_CHUNKS on a one-device CPU mesh, else 1 (on several
  devices a slice of the batch would span devices; on GPU/TPU it only adds kernel launches)."""
  one_cpu = mesh.devices.size == 1 and mesh.devices.flat[0].platform == "cpu"
  return CPU_BATCH_CHUNKS if one_cpu and cli.usable_cpus() > 1 else 1


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


def _write_config(workdir: Path, config: ml_collections.ConfigDict) -> None:
  """WORKDIR/config.json, replaced atomically; a differing (or unreadable) old one is logged: a
  warning, unless only train.steps changed (how a run is trained further)."""
  path = workdir / "config.json"
  if path.exists():
    try:
      saved = json.loads(path.read_text())
      if not isinstance(saved, dict):
        raise ValueError(f"a JSON {type(saved).__name__}, not an object")
    except (OSError, ValueError) as e:  # e.g. left empty by a crash: it is rewritten below
      log.warning("Could not read %s (%s); it is replaced by this run's config.", path, e)
    else:
      diff = config_diff(saved, config_values(config))
      if diff.keys() == {"train.steps"}:
        log.info("The run continues to step %d (%s since %s).", config.train.steps,
                 describe_changes(diff)[0], path)
      elif diff:
        log.warning("%s differs from this run's config (%s); the new config is used and saved.",
                    path, "; ".join(describe_changes(diff)))
  cli.write_atomically(path, json.dumps(config_values(config), indent=2))


def _unmade(workdir: Path, step: int, config: ml_collections.ConfigDict) -> tuple[bool, bool]:
  """Whether the sample grid and the evaluation due at `step`, where the run resumes, are missing
  (host 0's view, on every host): a kill during them, after the step's checkpoint, lost them, for
  good at the last step, which a rerun did not train again."""
  t, trained = config.train, 0 < step <= config.train.steps
  grid = trained and due(step, t.sample_every, t.steps) and not (
      workdir / "samples" / grid_name(step)).exists()
  evaluation = trained and in_training.enabled(config) and due(
      step, config.eval.every, t.steps) and not in_training.evaluated(workdir, step)
  return checkpoint.host_flags(grid)[0], checkpoint.host_flags(evaluation)[0]


def _evaluate(evaluate: in_training.TrainingEvaluator, state: TrainState, step: int, saved: bool,
              writer, manager, data_iter, config: ml_collections.ConfigDict) -> None:
  """Evaluates `step`; a new best's checkpoint is kept: saved if it was not, else the former's
  deleted (unless among the latest)."""
  former_best = evaluate.best_step
  evaluate(state, step, writer)
  if evaluate.best_step == step and saved and former_best is not None:
    checkpoint.drop_former_best(manager, former_best, config.train.keep_checkpoints)
  if evaluate.best_step == step and not saved:  # kept beside the latest (make_manager)
    with checkpoint_saving(manager.directory):
      checkpoint.save(manager, step, state, data_iter, config)


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


def train(config: ml_collections.ConfigDict, workdir: str | Path, devices=None, *,
          start_fresh_if_corrupt: bool = False) -> TrainState:
  """Trains to config.train.steps, resuming from workdir; `devices` defaults to all of them.

  Resumes from the newest checkpoint that restores (damaged ones are moved aside; with none
  readable it raises CorruptCheckpointError unless `start_fresh_if_corrupt`); one already at
  config.train.steps is returned as restored, config.json untouched and no evaluator set up,
  unless its last sample grid or evaluation is missing (a kill during them): made then. A resumed
  run makes those of the step it resumes at, if missing, before it trains.
  SIGTERM/SIGINT finish the current step, save and return early (every host at the same step).
  """
  workdir = local_workdir(workdir)
  check_same_config(config, workdir)
  check_workdir_writable(workdir)
  mesh = make_mesh(devices)
  validate(config, mesh.size)
  try:  # train.py checked only that the checkpoint's directory exists (or downloads)
    tokenizer, t5_config, pretrained_text = build_text(config)
  except (ValueError, OSError, TypeError, ImportError) as e:  # the loader names file and fix
    raise TextCheckpointError(f"config.text.checkpoint={config.text.checkpoint!r} could not be "
                              f"loaded: {e}") from e
  models = build_models(config, t5_config)
  source = _build_on_host_0(config.data) if jax.process_count() > 1 else None
  data_iter = make_iterator(
      config.data, tokenizer, batch_size_per_host=config.train.batch_size // jax.process_count(),
      seed=config.seed, source=source)

  manager = checkpoint.make_manager(workdir, config)
  abstract = create_state(models, mesh, config.seed, pretrained_text, abstract=True)  # no compile
  restored = checkpoint.restore_latest(manager, abstract, data_iter,
                                      start_fresh_if_corrupt=start_fresh_if_corrupt, config=config)
  state = create_state(models, mesh, config.seed, pretrained_text) if restored is None else restored
  if restored is not None:
    log.info("Resumed from %s at step %d.", manager.directory, int(state.step))
  start = int(state.step)
  in_training.set_aside_best_past(workdir, start, manager.all_steps())
  if (former := in_training.superseded_best(workdir, manager.all_steps())) is not None:
    checkpoint.drop_former_best(manager, former, config.train.keep_checkpoints)
  grid_unmade, eval_unmade = _unmade(workdir, start, config)
  unmade = " and ".join(["sample grid"] * grid_unmade + ["evaluation"] * eval_unmade)
  if start >= config.train.steps and unmade:
    log.warning("The run in %s is at its last step, %d: nothing to train; making the step's %s, "
                "which a stop cut short.", workdir, start, unmade)
  elif start >= config.train.steps:  # before config.json, TensorBoard and the evaluator's setup
    log.warning("The run in %s is at step %d, at or past config.train.steps=%d: nothing to "
                "train; its config.json and checkpoints are left as they are. Raise "
                "--config.train.steps to train further.", workdir, start, config.train.steps)
    manager.close()
    return state
  if jax.process_index() == 0 and start < config.train.steps:
    workdir.mkdir(parents=True, exist_ok=True)
    _write_config(workdir, config)
    if config.text.checkpoint:
      save_text_files(workdir, tokenizer, t5_config, replace=restored is None)
  writer = None
  if jax.process_index() == 0:
    # Steps past `start` logged by an earlier run (a fallback past a damaged checkpoint, a fresh
    # start over an old run) are hidden by TensorBoard, not drawn under this run's.
    writer = summary_writer(workdir / "tensorboard", purge_step=start + 1)
  samples = SampleWriter(models, tokenizer, config, workdir, mesh)
  evaluate = (in_training.TrainingEvaluator(models, tokenizer, config, workdir, mesh=mesh)
              if in_training.enabled(config) else None)
  step_fn = jit_train_step(models, mesh)

  t = config.train
  if jax.process_index() == 0:
    log_start(config, workdir, mesh, start)
  done, ended = start, "done"
  pending = []  # device metrics since the last log, fetched together to avoid a sync per step
  clock = _StepClock()
  bar = progress_bar(start, t.steps)
  with PreemptionWatch(manager) as watch, logs_above(bar):
    try:
      if grid_unmade:  # of the checkpoint resumed from: a kill during them lost them
        samples(state, start, writer)
      # A signal during those (one process; JAX's sync manager agrees on a step): no step since
      # the checkpoint to save; the evaluation (left to the rerun) or compiling the first step
      # would outlast a preemption's grace period.
      skip_eval = bool(eval_unmade and watch.signal and not watch.synced)
      if eval_unmade and not skip_eval:
        _evaluate(evaluate, state, start, True, writer, manager, data_iter, config)
      left = ["the step's evaluation"] * skip_eval + ["the first step"] * (start < t.steps)
      if stopped := bool(watch.signal and not watch.synced and left):
        log.warning("Stopped by %s before %s; rerun the same command to resume.",
                    watch.description, " and ".join(left))
      for step in range(start, start if stopped else t.steps):
        batch = to_global_batch(next(data_iter), mesh)
        state, metrics = step_fn(state, batch)
        pending.append(metrics)
        done = step + 1
        if step == start:  # compiling (and restoring) is not training throughput, nor the bar's
          jax.block_until_ready(metrics)
          clock.start()
          bar.unpause()  # its clock restarts: rate and ETA from the steps after this one
        else:
          clock.steps += 1
        bar.update(1)
        # SIGTERM/SIGINT: save now, stop (the same step everywhere); at the last step the run is
        # complete, so it ends as usual (its samples and evaluation are made now, not by a rerun).
        stop = watch.reached() and done < t.steps
        if due(done, t.log_every, t.steps) or stop:  # a stop: the steps since the log
          _log_metrics(jax.device_get(pending), done, clock, bar, writer, t, manager.directory)
          pending = []
        saved = due(done, t.ckpt_every, t.steps) or stop
        sample_now = due(done, t.sample_every, t.steps)
        eval_now = evaluate is not None and due(done, config.eval.every, t.steps)
        if saved or sample_now or eval_now:  # not training: off the clock
          clock.stop(state)
        if saved:  # before sampling and evaluation, whose errors would lose it
          with checkpoint_saving(manager.directory):
            checkpoint.save(manager, done, state, data_iter, config)
          flush_events(writer)  # the steps it holds are not logged again after a crash
        if stop:  # the grace period of a preemption is short: samples and evaluation on resuming
          log.warning("Stopped by %s after step %d with a checkpoint; rerun the same command to "
                      "resume.", watch.description, done)
          break
        if sample_now:
          samples(state, done, writer)
        if eval_now:
          _evaluate(evaluate, state, done, saved, writer, manager, data_iter, config)
        if sample_now or eval_now:
          flush_events(writer)
        clock.start()
      if done < t.steps:  # a SIGTERM/SIGINT (at the last step the run is complete)
        ended = f"stopped by {watch.description}"
    except BaseException as e:  # the end line names it, train.py (or the caller) reports it
      ended = f"stopped by {type(e).__name__}"
      raise
    finally:  # also on an error (e.g. DivergenceError): the last save, logs and bar end cleanly
      watch.finishing = True  # a signal now waits for the last save instead of cutting it
      bar.close()
      try:
        with checkpoint_saving(manager.directory):
          manager.close()  # waits for the last save first
        if jax.process_index() == 0:
          log_end(workdir, manager, done, t.steps, ended)
      finally:
        close_iterator(data_iter)  # its workers' buffered batches would be reported leaked
        if writer is not None:
          writer.close()
  return state
