"""Trains the text-conditioned GAN.

  python train.py --config configs/shapes_quick.py --workdir runs/quick [--config.train.steps=2000]

Rerunning the same command resumes from the latest checkpoint in the workdir. Multi-host: start
one process per host with --coordinator_address, --num_processes and --process_id (on Cloud TPU,
--distributed alone lets JAX find its peers).
"""
import logging

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, samples and logs go.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  # Orbax and TFDS log every step of every save at INFO through absl; keep ours, quiet theirs.
  logging.getLogger("absl").setLevel(logging.WARNING)
  import jax
  if _DISTRIBUTED.value or _COORDINATOR.value:
    # Only the CPU backend reads this; set it before any backend starts (CPU multi-process runs).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from llmimg_jax.train.loop import train
  logging.getLogger("llmimg_jax").info("JAX %s: %d process(es), %d device(s): %s",
                                       jax.__version__, jax.process_count(), jax.device_count(),
                                       jax.devices())
  train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
