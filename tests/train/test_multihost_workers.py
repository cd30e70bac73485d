"""A run with grain worker processes (data.num_workers > 0) resumed on another number of processes:
trained on one, resumed on two (jax.distributed on 127.0.0.1, gloo collectives), then on one
again, it reaches the input position of a run that never changed its process count."""
from __future__ import annotations

import json
import logging
import shutil

import jax
import pytest

from llmimg_jax.train import loop
from tests.train.cli_utils import (
    Proc, _devices_env, _free_port, finished_steps, flags, train_args)
from tests.train.test_multihost import _finish_all
from tests.train.utils import tiny_config

STEPS = 4
# 2 workers; per-host batches of 8 (one process) and 4 (two): both multiples of 2, so any step's
# input position carries over (data/host_slices.py).
CHANGES = {"train.steps": STEPS, "train.log_every": 1, "train.ckpt_every": 1,
           "train.keep_checkpoints": 10, "train.sample_every": 1000, "data.num_workers": 2,
           "loss.gp": "none", "loss.diffaugment": "", "model.attn_resolutions": (),
           "loss.contrastive_weight": 0.0}


def _positions(workdir, step: int) -> list[dict]:
  """The hosts' saved input-iterator states of `step`."""
  data = workdir / "checkpoints" / str(step) / "data"
  return [json.loads(p.read_text()) for p in sorted(data.glob("process_*.json"))]


@pytest.mark.slow
def test_grain_workers_resume_on_another_process_count(shapes_data_dir, tmp_path, caplog):
  config = tiny_config(shapes_data_dir)
  config.update_from_flattened_dict(CHANGES)
  loop.train(config, tmp_path / "one")  # 1 process x 8 devices, a checkpoint every step
  assert finished_steps(tmp_path / "one") == [1, 2, 3, 4]

  run = tmp_path / "one_two_one"
  shutil.copytree(tmp_path / "one" / "checkpoints" / "2", run / "checkpoints" / "2")
  port = _free_port()
  procs = [Proc(train_args(shapes_data_dir, run, *flags(CHANGES),
                           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                           f"--process_id={i}"), **_devices_env(2)) for i in range(2)]
  _finish_all(procs)
  assert all("input position saved by 1 process(es) on this run's 2" in p.output for p in procs)
  assert finished_steps(run) == [2, 3, 4]
  assert [p["sampler"][-len("process=1/2)"):] for p in _positions(run, 3)] == [
      "process=0/2)", "process=1/2)"]

  shutil.rmtree(run / "checkpoints" / "4")  # resumed from step 3, saved by two processes
  with caplog.at_level(logging.INFO):
    loop.train(config, run)
  assert "input position saved by 2 process(es) on this run's 1" in caplog.text
  assert _positions(run, 4) == _positions(tmp_path / "one", 4)
  assert jax.process_count() == 1
