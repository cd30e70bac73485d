"""cli.ends_on_signal in the entry points other than train.py (whose own handling
tests/train/test_signal_in_compile.py tests): Ctrl-C or SIGTERM is one line and status 130 or
143. Without it, a Ctrl-C printed a traceback, and one during an XLA compile then crashed
Python's shutdown (segmentation fault, status -11); a SIGTERM killed sample.py mid-write and left
its staging folder in --out for good."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from llmimg_jax import cli
from llmimg_jax.sample import outputs
from tests.sample.utils import black_samples
from tests.train.cli_utils import HEED_CTRL_C, ROOT, Proc

# XLA's compile comes next; Python raises the KeyboardInterrupt as it returns.
_LOWERED = "Finished jaxpr to MLIR module conversion jit({})"


def _signal_and_finish(proc: Proc, after: str, signum: int) -> str:
  """Sends `signum` once `after` is in the output; the output, after asserting the exit status
  of the one-line error and no crash or traceback."""
  proc.wait_for(lambda: after in proc.output, what=after)
  proc.popen.send_signal(signum)
  assert proc.finish(timeout=120) == 128 + signum, proc.output[-3000:]
  assert "Fatal Python error" not in proc.output and "Traceback" not in proc.output, (
      proc.output[-3000:])
  return proc.output.rstrip()


def test_ctrl_c_while_t5_compiles_is_one_line_not_a_crash():
  """The built-in untrained T5 (no files): 5 of 5 such Ctrl-Cs crashed."""
  proc = Proc([sys.executable, "-m", "llmimg_jax.text", "--text", "hello"], cwd=ROOT,
              ctrl_c=True, JAX_LOG_COMPILES="1", JAX_ENABLE_COMPILATION_CACHE="false")
  output = _signal_and_finish(proc, _LOWERED.format("init"), signal.SIGINT)
  assert output.endswith("python -m llmimg_jax.text: error: interrupted by Ctrl-C; rerun the "
                         "command."), output[-3000:]


def test_sigterm_while_sample_compiles_writes_nothing(run, tmp_path):
  proc = Proc([sys.executable, "sample.py", "--workdir", str(run.workdir), "--prompt", "a red "
               "circle", "--out", str(tmp_path / "out")], cwd=ROOT, JAX_LOG_COMPILES="1",
              JAX_ENABLE_COMPILATION_CACHE="false")
  output = _signal_and_finish(proc, _LOWERED.format("generate_numbered_images"), signal.SIGTERM)
  assert output.endswith("sample.py: error: stopped by SIGTERM; the samples were not all "
                         "written: rerun the command."), output[-3000:]
  assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_ctrl_c_during_evaluate_is_one_line(run, tmp_path):
  proc = Proc([sys.executable, "evaluate.py", "--workdir", str(run.workdir), "--num_samples",
               "16", "--out", str(tmp_path / "eval.json")], cwd=ROOT, ctrl_c=True,
              JAX_LOG_COMPILES="1", LLMIMG_CACHE_DIR=str(tmp_path / "cache"))
  output = _signal_and_finish(proc, "Compiling ", signal.SIGINT)
  assert output.endswith("evaluate.py: error: interrupted by Ctrl-C; no results were written: "
                         "rerun the command."), output[-3000:]
  assert not (tmp_path / "eval.json").exists()


def test_ctrl_c_during_the_benchmarks_is_one_line():
  """benchmarks/run.py printed a KeyboardInterrupt traceback (from inside XLA's compile)."""
  proc = Proc([sys.executable, "benchmarks/run.py", "--skip-gan", "--iters", "1", "--warmup", "0"],
              cwd=ROOT, ctrl_c=True, JAX_LOG_COMPILES="1", JAX_ENABLE_COMPILATION_CACHE="false")
  output = _signal_and_finish(proc, "| dtype float32", signal.SIGINT)  # timing the peak matmul
  assert output.endswith("benchmarks/run.py: error: interrupted by Ctrl-C; the benchmarks did not "
                         "finish (the tables printed so far hold what was measured): rerun the "
                         "command."), output[-3000:]


def test_ctrl_c_during_a_build_is_one_line_and_leaves_no_partial_build(tmp_path):
  proc = Proc([sys.executable, "-m", "llmimg_jax.data.prepare", "--dataset",
               "captioned_shapes/32", "--data_dir", str(tmp_path), "--num_proc", "1"], cwd=ROOT,
              ctrl_c=True)
  output = _signal_and_finish(proc, "img/s]", signal.SIGINT)  # tqdm's bar: building
  assert output.endswith("prepare.py: error: interrupted by Ctrl-C; a build it had not finished "
                         "is not kept (TFDS): rerun the command."), output
  assert not list(tmp_path.glob("captioned_shapes/32/*/*")), "a partial build was kept"


def test_sigterm_while_samples_are_written_leaves_no_staging_folder(tmp_path, monkeypatch):
  """SIGTERM as ends_on_signal has it handled (an exception): write_samples' cleanup runs."""
  saved = []
  fromarray = outputs.Image.fromarray

  def save_then_terminate(image):
    saved.append(image)
    if len(saved) == 3:
      signal.raise_signal(signal.SIGTERM)
    return fromarray(image)

  monkeypatch.setattr(outputs.Image, "fromarray", save_then_terminate)
  previous = signal.signal(signal.SIGTERM, cli.raise_terminated)
  try:
    with pytest.raises(cli.Terminated):
      outputs.write_samples(black_samples(2, 3), tmp_path / "out")
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert len(saved) == 3 and not list((tmp_path / "out").iterdir())


_IGNORED_BY_PYTHON = """
import gc, signal, sys, time
from llmimg_jax import cli

def collecting(phase, info):  # the signal's exception is raised here, where Python ignores it
  if phase == "start":
    signal.raise_signal(getattr(signal, sys.argv[1]))

with cli.ends_on_signal("prog", "rerun the command."):
  gc.callbacks.append(collecting)
  gc.collect()
  gc.callbacks.remove(collecting)
  time.sleep(20)  # then status 0
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_whose_exception_python_ignored_still_ends_the_command(signum):
  """The signal's exception raised in a gc callback (JAX has one) or a __del__ is printed as
  'Exception ignored in: ...' and lost: evaluate.py went on after about 1 in 10 Ctrl-Cs as it
  began (in JAX's _xla_gc_callback). The signal is sent again."""
  proc = subprocess.run([*HEED_CTRL_C, sys.executable, "-c", _IGNORED_BY_PYTHON, signum.name],
                        cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 128 + signum, proc.stderr
  stopped = "interrupted by Ctrl-C" if signum == signal.SIGINT else "stopped by SIGTERM"
  assert proc.stderr.endswith(f"prog: error: {stopped}; rerun the command.\n"), proc.stderr


def test_every_benchmark_script_runs_its_main_in_ends_on_signal():
  """As run.py's and twin_ab.py's (tested running) do: a Ctrl-C during twin_ab.py,
  step_options.py, profile_step.py or eval_options.py crashed Python's shutdown (status -11),
  and one during the others printed a traceback."""
  scripts = [p for p in sorted((ROOT / "benchmarks").glob("*.py"))
             if 'if __name__ == "__main__":' in p.read_text()]
  assert len(scripts) >= 13
  for path in scripts:
    main_block = path.read_text().split('if __name__ == "__main__":\n')[1]
    assert main_block.split("\n")[-2:] == ["    main()", ""], path.name
    assert f'cli.ends_on_signal("benchmarks/{path.name}",' in main_block, path.name


def test_ctrl_c_while_a_benchmark_compiles_is_one_line_not_a_crash():
  proc = Proc([sys.executable, "benchmarks/twin_ab.py", "--rounds", "1"], cwd=ROOT, ctrl_c=True,
              JAX_LOG_COMPILES="1", JAX_ENABLE_COMPILATION_CACHE="false")
  output = _signal_and_finish(proc, "Finished jaxpr to MLIR module conversion", signal.SIGINT)
  assert output.endswith("benchmarks/twin_ab.py: error: interrupted by Ctrl-C; the variants were "
                         "not all timed: rerun the command."), output[-3000:]


def test_ctrl_c_during_the_build_benchmark_removes_its_partial_build(tmp_path):
  """benchmarks/data_build.py printed a traceback and left its build_CONFIG_PID/ folder."""
  proc = Proc([sys.executable, "benchmarks/data_build.py", "--config", "32", "--data_dir",
               str(tmp_path), "--num_proc", "1"], cwd=ROOT, ctrl_c=True)
  output = _signal_and_finish(proc, "img/s]", signal.SIGINT)  # tqdm's bar: building
  assert output.endswith("data_build.py: error: interrupted by Ctrl-C; the partial build was "
                         "removed: rerun the command."), output[-3000:]
  assert list(tmp_path.iterdir()) == []
