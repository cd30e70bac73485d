"""Test-session setup: 8 simulated CPU devices, so data-parallel code paths run everywhere."""
import gc
import os
import tempfile

import pytest

# Must happen before JAX initialises its backends; tests that need 1 device use a 1-device mesh.
# Two XLA:CPU options that make programs compile faster, a net win for tests that mostly compile:
# - LLVM's O0 for XLA's own kernels: compile ~1/3 faster, elementwise kernels slower (`python
#   benchmarks/step_options.py --options xla_backend_optimization_level=0`, the shapes_quick step:
#   compile 17.8 -> 12.1 s, step 146 -> 258 ms; the suite: 12:49 -> 10:38 min).
# - XLA's older elemental IR emitter for fusions instead of its MLIR fusion emitters, whose pass
#   pipeline took a third of the compile time at O0 (`python benchmarks/step_options.py --baseline
#   train --options "train;xla_backend_optimization_level=0" --options
#   "train;xla_backend_optimization_level=0;xla_cpu_use_fusion_emitters=False"`, the shapes_quick
#   step, AVX-512 VM 2026-12-02: compile 16.3 -> 10.8 -> 7.2 s, step 46.7 -> 133.8 -> 108.7 ms);
#   the suite compiles in 188 s instead of 350.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


_CACHE_ENV = "LLMIMG_JAX_TEST_XLA_CACHE"  # the run's compilation cache, for pytest-xdist's workers
_owned_cache: list[str] = []  # the folder this process made, removed when the run ends


def pytest_configure(config):
  # Tests compile the same small programs many times (every train() call); a session-wide
  # persistent compilation cache makes the repeats cheap. The process that starts the run (xdist's
  # controller, or pytest without -n) makes the folder; the workers it starts inherit its path
  # and share it, so each program compiles once per run.
  import tempfile

  import jax
  cache = os.environ.get(_CACHE_ENV)
  if cache is None:
    cache = tempfile.mkdtemp(prefix="llmimg_jax_xla_")
    os.environ[_CACHE_ENV] = cache
    _owned_cache.append(cache)
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  # Tracing makes millions of Python objects. CPython collects its young generation every 700
  # allocations and, every 10th and 100th time, the older ones, which with jax, flax, TF and
  # torch imported hold a large heap (`perf record python benchmarks/step_options.py --rounds 1
  # --baseline "train;xla_backend_optimization_level=0;xla_cpu_use_fusion_emitters=False"`, which
  # imports, traces, compiles and runs the shapes_quick step: gc_collect_main 3.8% of all samples,
  # second to the interpreter loop's 5.4%). Here the young generation every 100,000 allocations,
  # the older ones every 50th and 2,500th time. With and without this line, alternating: `pytest
  # tests/train/test_loop.py tests/gan/test_generator.py tests/text/test_generation.py` 156 and
  # 148 s of CPU -> 146 and 140 s; the suite (`pytest -n 2 -m "not slow"`, one run each): 745 ->
  # 717 s, 1,408 -> 1,378 s of CPU, within the VM's noise. (train.py's subprocesses keep the
  # default.)
  gc.set_threshold(100_000, 50, 50)


def pytest_unconfigure(config):
  import shutil
  for cache in _owned_cache:  # up to ~20 MB of compiled programs per run, left in /tmp before
    shutil.rmtree(cache, ignore_errors=True)


# The modules holding the suite's longest tests (30-130 s each under -n 2: subprocess runs of
# train.py, two-host runs; with -m slow, training to a quality bar) run first. Collected last
# (tests/train/), they ended the run with one xdist worker busy for minutes while the other had
# nothing left; first, the short tests fill in around them. Whole modules move, so module
# fixtures are built once per worker as before. test_step_reference.py (two module fixtures of
# 18-23 s each under -n 1) and test_resume_agree.py (a 20 s test), collected among the last of
# tests/train/, are as long as the others (`pytest -n 1 -m "not slow" --durations=60`).
_FIRST = ("tests/train/test_multihost.py", "tests/train/test_multihost_workers.py",
          "tests/train/test_train_cli.py", "tests/train/test_loop.py", "tests/train/test_step.py",
          "tests/train/test_step_reference.py", "tests/train/test_step_program.py",
          "tests/train/test_reliability.py",
          "tests/train/test_resume_agree.py", "tests/train/test_learns_text.py",
          "tests/eval/test_shapes_eval.py")


def pytest_collection_modifyitems(items):
  def rank(item) -> int:
    module = item.nodeid.split("::")[0]
    return _FIRST.index(module) if module in _FIRST else len(_FIRST)
  items.sort(key=rank)  # stable: the order within each module and of the rest is kept


@pytest.fixture(scope="session")
def run(tmp_path_factory):
  """A tiny run in train.py's layout (tests.sample.utils.Run), saved from 8 simulated devices: the
  sampling and evaluation tests' run, built once per session (xdist worker). Here, not in
  tests/sample/conftest.py: each module importing a fixture gets its own, built once per module
  (7 times per worker in tests/eval and tests/sample). Its values are drawn on the host, not
  trained: compiling a train step (~60 s) or the init (~12 s) on this CPU would dominate the
  suite, and sampling only reads ema_params/text_params/config. (Sampling a real train.py run is
  the same code path.) Each step's EMA differs from g_params and from the other step's, so tests
  can tell them apart."""
  from tests.sample.utils import save_run  # imports JAX: after XLA_FLAGS above
  from tests.train.utils import tiny_config
  return save_run(tmp_path_factory.mktemp("sample_run"),
                  tiny_config(tmp_path_factory.mktemp("unused_data")))


@pytest.fixture(scope="session")
def sampler(run):
  """The Sampler of `run` (batch_size 8), restored once per session (xdist worker) for
  tests/sample and tests/eval: a test that sets an attribute (e.g. its expander) puts it back."""
  from llmimg_jax.sample import Sampler
  return Sampler.from_workdir(run.workdir, batch_size=8)


@pytest.fixture
def spare(tmp_path, monkeypatch):
  """This test's own temporary folder (tempfile's), where a failed late write keeps its results."""
  folder = tmp_path / "tmp"
  folder.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(folder))
  return folder
