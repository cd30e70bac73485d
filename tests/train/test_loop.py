"""The training loop end to end on a tiny config: checkpoints, resume, samples, TensorBoard."""
import logging

import jax
import numpy as np

from llmimg_jax.train import checkpoint, loop
from tests.train.conftest import tiny_config


def _max_diff(a, b) -> float:
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


def test_short_run_writes_checkpoints_and_resumes(shapes_data_dir, tmp_path, caplog):
  workdir = tmp_path / "run"
  config = tiny_config(shapes_data_dir)
  first = jax.device_get(loop.train(config, workdir))
  assert int(first.step) == 4
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
  with caplog.at_level(logging.INFO):
    second = loop.train(config, workdir)
  assert "Resumed from" in caplog.text and "at step 4" in caplog.text
  assert int(second.step) == 6
  assert checkpoint.make_manager(workdir, config).latest_step() == 6
  assert _max_diff(first.g_params, jax.device_get(second.g_params)) > 0.0
