"""A run whose output (the bar, the logs, TFDS's build on stdout) can no longer be written: it
trains and saves on."""
from __future__ import annotations

import subprocess

from tests.train.cli_utils import ROOT, env, finished_steps, train_args


def test_a_run_whose_log_reader_is_gone_trains_saves_and_exits_0(shapes_data_dir, tmp_path):
  """`train.py ... 2>&1 | head -1`, or `| tee log` with tee killed: the bar's next draw raised
  BrokenPipeError, and the run ended with status 1 and no checkpoint."""
  workdir = tmp_path / "run"
  popen = subprocess.Popen(train_args(shapes_data_dir, workdir), env=env(), cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  first = popen.stdout.readline()  # before the model is built: the bar is drawn after
  popen.stdout.close()  # the reader gone: every write to the pipe from now on fails (EPIPE)
  try:
    rc = popen.wait(300)
  except subprocess.TimeoutExpired:
    popen.kill()
    raise
  assert (rc, finished_steps(workdir)) == (0, [2, 4]), first  # tiny_config: 4 steps, saves at 2
