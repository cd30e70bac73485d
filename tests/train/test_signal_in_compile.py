"""train.py stopped by a signal while XLA compiles its first program (a real one, not a
stand-in train(): test_train_cli's signal tests)."""
from __future__ import annotations

import signal

import pytest

from tests.train.cli_utils import Proc, train_args


def test_a_sigterm_while_the_state_compiles_is_status_143_not_a_crash(shapes_data_dir, tmp_path):
  """The handler's exception ends JAX's compile of init_state; Python's shutdown after it crashed
  (segmentation fault, status 139 or -11, after the one-line error) instead of exiting 143. The
  signal goes as lowering ends, XLA's compile next (a signal during lowering did not crash, and
  one after the compile may reach the first step, which saves: skipped)."""
  # Without the compilation cache: a cached init_state would load before the signal lands, and
  # the signal would reach the first step (which saves, exit 0).
  proc = Proc(train_args(shapes_data_dir, tmp_path / "run"), JAX_LOG_COMPILES="1",
              JAX_ENABLE_COMPILATION_CACHE="false")
  lowered = "Finished jaxpr to MLIR module conversion jit(init_state)"  # XLA's compile next
  proc.wait_for(lambda: lowered in proc.output, what="init_state's lowering")
  proc.popen.send_signal(signal.SIGTERM)
  before_signal = proc.output
  if "Finished XLA compilation of jit(init_state)" in before_signal:
    proc.finish(timeout=120)
    pytest.skip("init_state compiled before the signal landed")
  assert proc.finish(timeout=120) == 128 + signal.SIGTERM, proc.output[-3000:]
  assert "Fatal Python error" not in proc.output, proc.output[-3000:]
  assert proc.output.rstrip().endswith(
      f"train.py: error: stopped by SIGTERM before a step could be saved (while building, "
      f"restoring or compiling); the checkpoints in {tmp_path / 'run'}/checkpoints are kept: "
      "rerun the same command to resume from the latest."), proc.output[-3000:]
