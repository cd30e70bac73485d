"""platforms: a JAX_PLATFORMS that cannot start is one line and the entry point's status in every
entry point. Before, it was JAX's traceback from the first array: for cuda on a machine without
an NVIDIA GPU a bare AssertionError."""
from __future__ import annotations

import subprocess
import sys

import pytest

from llmimg_jax import platforms
from tests.train.cli_utils import CONFIG_FILE, ROOT, env

_START = "from llmimg_jax import platforms; platforms.start_backends('prog', 7)"
_FIX = "or unset JAX_PLATFORMS (JAX then takes what this machine has, the CPU at least)."


@pytest.mark.parametrize("prog, args, status", [
    ("train.py", [str(ROOT / "train.py"), f"--config={CONFIG_FILE}:d", "--workdir=w"], 2),
    ("sample.py", [str(ROOT / "sample.py"), "--workdir=w", "--prompt=a red circle", "--out=s"], 1),
    ("evaluate.py", [str(ROOT / "evaluate.py"), "--workdir=w"], 1),
    ("python -m llmimg_jax.text", ["-m", "llmimg_jax.text", "--text=hello"], 2),
])
def test_a_platform_jax_does_not_know_is_one_line(prog, args, status, tmp_path):
  proc = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env(JAX_PLATFORMS="nosuch"),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == status, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert proc.stderr.rstrip().splitlines()[-1] == (
      f"{prog}: error: JAX_PLATFORMS=nosuch: JAX has no platform 'nosuch': name some of cpu, "
      f"cuda, rocm, tpu (gpu: cuda or rocm), comma-separated, {_FIX}"), proc.stderr[-3000:]
  assert not (tmp_path / "w").exists() and not (tmp_path / "s").exists()


def test_cuda_without_a_gpu_names_the_missing_gpu():
  """JAX skips cuda where no NVIDIA GPU is visible, then asserts that some backend started."""
  from jax._src import hardware_utils
  if hardware_utils.has_visible_nvidia_gpu():
    pytest.skip("an NVIDIA GPU is visible here")
  proc = subprocess.run([sys.executable, "-c", _START], cwd=ROOT, env=env(JAX_PLATFORMS="cuda"),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 7, proc.stderr[-3000:]
  assert proc.stderr.rstrip().splitlines()[-1] == (
      "prog: error: JAX could not start JAX_PLATFORMS=cuda: none of the platforms it names "
      "started (no NVIDIA GPU is visible to this process). Run where that hardware is, with its "
      "JAX plugin installed (pip install -U \"jax[cuda12]\" for NVIDIA GPUs, \"jax[tpu]\" on a "
      f"Cloud TPU VM), {_FIX}"), proc.stderr[-3000:]


def test_a_platform_without_its_plugin_is_not_called_unknown():
  """rocm (and gpu's rocm half) without JAX's ROCm plugin: a known platform that did not start."""
  line = platforms.start_error(RuntimeError(
      "Unable to initialize backend 'rocm': Backend 'rocm' is not in the list of known backends: "
      "['cpu', 'tpu']. (set JAX_PLATFORMS='' to automatically choose an available backend)"),
      "gpu")
  assert line.startswith("JAX could not start JAX_PLATFORMS=gpu: Unable to initialize backend "
                         "'rocm': Backend 'rocm' is not in the list of known backends: ['cpu', "
                         "'tpu']. Run where that hardware is"), line


def test_an_error_of_jax_platform_name_is_jax_s():
  """JAX_PLATFORM_NAME naming a backend that did not start is no failure to start one."""
  proc = subprocess.run([sys.executable, "-c", _START], cwd=ROOT, capture_output=True, text=True,
                        env=env(JAX_PLATFORMS="cpu", JAX_PLATFORM_NAME="tpu"), timeout=120)
  assert proc.returncode == 1 and "prog: error" not in proc.stderr, proc.stderr[-3000:]
  assert "RuntimeError: Unknown backend tpu" in proc.stderr, proc.stderr[-3000:]  # JAX's


def test_a_failing_plugin_without_jax_platforms_keeps_jax_reason():
  line = platforms.start_error(RuntimeError(
      "Unable to initialize backend 'cuda': no driver (you may need to uninstall the failing "
      "plugin package, or set JAX_PLATFORMS=cpu to skip this backend.)"), "")
  assert line == ("JAX could not start its backends: Unable to initialize backend 'cuda': no "
                  "driver. Uninstall or repair the failing JAX plugin, or set JAX_PLATFORMS=cpu "
                  "to use the CPU alone.")


def test_other_errors_pass_through():
  """Only errors raised where JAX starts its backends become the one line."""
  with pytest.raises(RuntimeError, match="^the body's$"):
    with platforms.starting_backends("prog", 7):
      raise RuntimeError("the body's")
