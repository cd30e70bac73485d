"""Trains the text-conditioned GAN.

  python train.py --config configs/shapes_quick.py --workdir runs/quick [--config.train.steps=2000]

Rerunning the same command resumes from the latest checkpoint in the workdir (after a crash, the
newest one that restores); a run already at config.train.steps says so and exits 0, changing
nothing (raise --config.train.steps to train further) but making its last sample grid or evaluation
if a kill cut them short. SIGTERM or Ctrl-C finishes the current step, saves a checkpoint and
exits 0 (one during the first step's compilation waits for it; the step's sample grid and
evaluation, if due, are made on resuming); before the loop (building, restoring, initialising)
they stop at once with status 143 / 130, the checkpoints kept. Multi-host: start one process per
host with --coordinator_address, --num_processes and --process_id (on Cloud TPU, --distributed alone
lets JAX find its peers); a SIGTERM to any host saves at one agreed step on every host, also
before the loop and with one process (JAX's preemption notifier owns SIGTERM there). Config
and checkpoint errors print one paragraph and exit with status 2 (config, data, workdir, a
JAX_PLATFORMS that cannot start) or 3 (no readable checkpoint, checkpoints that do not fit this
run's config, hosts that would resume at different points, an unreadable best.json, a checkpoint
that cannot be written; divergence).
"""
import logging
import signal

from absl import app, flags
from ml_collections import config_flags

from llmimg_jax import cli, console, platforms

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, samples and logs go.")
_START_FRESH = flags.DEFINE_bool(
    "start_fresh_if_corrupt", False,
    "If no checkpoint in the workdir can be restored (damaged files), move them to "
    "WORKDIR/corrupt_checkpoints/ and train from step 0 instead of stopping with an error.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])
_CONNECT_TIMEOUT_S = 300  # jax.distributed.initialize's default


def _connect_hosts() -> None:
  """jax.distributed.initialize() with --distributed or --coordinator_address (a cluster it
  cannot join: one paragraph, status 2); nothing for a one-process run."""
  import jax
  hosts = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  cluster = ("give --coordinator_address, --num_processes and --process_id, or --distributed "
             "alone where JAX detects the cluster (Cloud TPU, SLURM, Open MPI, Kubernetes)")
  if not (_DISTRIBUTED.value or _COORDINATOR.value) and hosts != (None, None, None):
    cli.fail("train.py", f"--num_processes/--process_id without --coordinator_address would "
             f"train one independent process per host: {cluster}.", 2)
  if _DISTRIBUTED.value or _COORDINATOR.value:
    # Only the CPU backend reads this; set it before any backend starts (CPU multi-process runs).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if None not in hosts:  # JAX waits silently, then aborts with DEADLINE_EXCEEDED
      logging.getLogger("llmimg_jax").info(
          "Process %d of %d: waiting up to %d s for every process to connect to %s. If this "
          "times out (DEADLINE_EXCEEDED), start each with this --coordinator_address (process "
          "0's host:port) and --num_processes, and its own --process_id (0 to %d).",
          _PROCESS_ID.value, _NUM_PROCESSES.value, _CONNECT_TIMEOUT_S, _COORDINATOR.value,
          _NUM_PROCESSES.value - 1)
    try:
      jax.distributed.initialize(*hosts, initialization_timeout=_CONNECT_TIMEOUT_S)
    except (ValueError, RuntimeError) as e:
      alone = ("; on one host (several GPUs too), drop --distributed: train.py uses all of its "
               "devices without it" if hosts == (None, None, None) else "")
      cli.fail("train.py", f"jax.distributed.initialize failed ({' '.join(str(e).split())}): "
               f"{cluster}{alone}.", 2)


def main(argv: list[str]) -> None:
  if len(argv) > 1:  # absl leaves them: `--start_fresh_if_corrupt false` set it, left "false"
    cli.fail("train.py", f"unexpected argument(s) {argv[1:]}: train.py takes flags only. Give a "
             "value as --name=value (--config.train.steps=2000), and a boolean flag as --name or "
             "--noname (--nostart_fresh_if_corrupt, or --start_fresh_if_corrupt=false), not "
             "'--name false'; nothing was trained.", 2)
  # Orbax and TFDS log every step of every save at INFO through absl; keep ours, quiet theirs.
  logging.getLogger("absl").setLevel(logging.WARNING)
  cli.quiet_orbax()  # no asyncio tracebacks around a checkpoint that fails to restore
  import jax
  from llmimg_jax.train.host_memory import reuse_host_memory
  _connect_hosts()
  with platforms.starting_backends("train.py", 2):  # e.g. JAX_PLATFORMS=cuda without a GPU
    reuse_host_memory()  # on CPU, XLA's per-step scratch memory stays mapped between steps
  from llmimg_jax.data.caption_files import FolderError
  from llmimg_jax.data.coco import CocoDownloadError
  from llmimg_jax.data.tfds_utils import DatasetError
  from llmimg_jax.text.loading import resolve_checkpoint_dir
  from llmimg_jax.train.checkpoint import CorruptCheckpointError
  from llmimg_jax.train.config import validate
  from llmimg_jax.train.hosts import failed_hosts
  from llmimg_jax.train.loop import (DataNotSharedError, DivergenceError, TextCheckpointError,
                                     local_workdir, train)
  from llmimg_jax.train.preemption import sync_manager_active
  from llmimg_jax.train.resume_agree import ResumeDisagreesError
  from llmimg_jax.train.same_config import ConfigDiffersError
  from llmimg_jax.train.summaries import describe_devices
  from llmimg_jax.train.workdir import (CheckpointSaveError, WorkdirNotWritableError,
                                       check_workdir_outside_data)
  config = _CONFIG.value
  num_devices = jax.device_count()  # every host: the others wait for this host's devices
  problem = None
  try:  # before anything compiles or loads: a bad config fails in seconds
    workdir = local_workdir(_WORKDIR.value)
    validate(config, num_devices)
    check_workdir_outside_data(workdir, config.data)
    if config.text.checkpoint:  # a missing directory, or a hub name that cannot be had
      resolve_checkpoint_dir(config.text.checkpoint)
  except (ValueError, FileNotFoundError, NotADirectoryError) as e:
    problem = str(e)
  # Every host stops, not only those with the error (the others would wait minutes); a barrier
  # first, as a hub download on one host outlasts gloo's 30 s.
  if failed := failed_hosts(problem is None, "config_checked"):
    cli.fail("train.py", problem or f"host(s) {failed} stopped with a config error, which their "
             "logs name; nothing was trained.", 2)
  overrides = ", ".join(f"{key}={value}" for key, value in  # --config.a.b=value flags
                        config_flags.get_override_values(flags.FLAGS["config"]).items())
  logging.getLogger("llmimg_jax").info(
      "JAX %s: %d process(es), %d device(s) (%s); config %s%s.", jax.__version__,
      jax.process_count(), jax.device_count(), describe_devices(jax.devices()),
      config_flags.get_config_filename(flags.FLAGS["config"]),
      f" with {overrides}" if overrides else "")
  # With JAX's distributed service (even of one process, e.g. --distributed on a one-host TPU VM)
  # SIGTERM belongs to its preemption notifier: the loop saves at the step it agrees on.
  if not sync_manager_active():
    signal.signal(signal.SIGTERM, cli.raise_terminated)  # in the steps, the loop saves first
  cli.resend_ignored_signals()
  try:
    train(config, _WORKDIR.value, start_fresh_if_corrupt=_START_FRESH.value)
  except (FolderError, CocoDownloadError, DatasetError, DataNotSharedError, ConfigDiffersError,
          WorkdirNotWritableError, TextCheckpointError) as e:  # e.g. no usable image, COCO offline
    cli.fail("train.py", str(e), 2)
  except (CorruptCheckpointError, ResumeDisagreesError, DivergenceError, CheckpointSaveError) as e:
    cli.fail("train.py", str(e), 3)
  # A signal can interrupt JAX mid-compile, after which Python's shutdown crashed: exit at once.
  except KeyboardInterrupt:  # Ctrl-C before the first step (restore, compile), or a second one
    cli.fail_now("train.py", f"interrupted by Ctrl-C without saving; the checkpoints in "
                 f"{_WORKDIR.value}/checkpoints are kept: rerun the same command to resume from "
                 "the latest.", 130)
  except cli.Terminated:
    cli.fail_now("train.py", f"stopped by SIGTERM before a step could be saved (while "
                 f"building, restoring or compiling); the checkpoints in {_WORKDIR.value}/"
                 "checkpoints are kept: rerun the same command to resume from the latest.",
                 128 + signal.SIGTERM)


if __name__ == "__main__":
  console.guard_stdout("train.py")  # TFDS's build prints there
  app.run(main, flags_parser=cli.flags_parser("train.py", required={
      "workdir": "name the folder for the run's checkpoints, samples and logs, e.g. --workdir "
                 "runs/shapes_quick (a run already there resumes)."}))
