"""JAX's backends started by the entry points, so that a JAX_PLATFORMS this machine cannot start
(cuda without an NVIDIA GPU or without JAX's CUDA plugin, tpu without libtpu, a misspelling) or a
JAX plugin that fails is one line naming the fix, not JAX's traceback from the first array (a bare
AssertionError for cuda without a GPU)."""
from __future__ import annotations

import contextlib
import os
import re
import traceback
from collections.abc import Iterator

from llmimg_jax import cli

_XLA_BRIDGE = os.path.join("jax", "_src", "xla_bridge.py")  # its backends() starts them
_JAX_HINT = re.compile(r"\s*\((set|you may need to) [^()]*\)$")  # JAX's own fix, replaced by ours
_UNKNOWN = re.compile(r"Backend '([^']*)' is not in the list of known backends")
_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # JAX's (cuda, rocm and tpu with their plugins)
_FIX = "or unset JAX_PLATFORMS (JAX then takes what this machine has, the CPU at least)."


@contextlib.contextmanager
def starting_backends(prog: str, status: int) -> Iterator[None]:
  """Runs its body (what must precede the backends' start, e.g. settings the CPU client reads
  when it starts), then starts JAX's backends; an error JAX raises starting them ends `prog` with
  one line and `status`, any other passes on."""
  import jax
  try:
    yield
    jax.devices()
  except (RuntimeError, AssertionError) as e:
    where = traceback.extract_tb(e.__traceback__)[-1:]
    if not (where and where[0].filename.endswith(_XLA_BRIDGE) and where[0].name == "backends"):
      raise  # not the start: e.g. JAX_PLATFORM_NAME naming a backend that is not there
    cli.fail(prog, start_error(e, jax.config.jax_platforms or ""), status)


def start_error(e: BaseException, platforms: str) -> str:
  """The line for error `e` of JAX's backends' start under JAX_PLATFORMS=`platforms` ('' unset)."""
  reason = _JAX_HINT.sub("", " ".join(str(e).split())).rstrip(".")
  names = platforms.split(",") if platforms else []
  if (unknown := _UNKNOWN.search(reason)) and unknown[1] in names and unknown[1] not in _PLATFORMS:
    return (f"JAX_PLATFORMS={platforms}: JAX has no platform {unknown[1]!r}: name some of "
            f"{', '.join(_PLATFORMS)} (gpu: cuda or rocm), comma-separated, {_FIX}")
  if not reason:  # JAX's assertion that some backend started: cuda skipped without a GPU
    gpu = (" (no NVIDIA GPU is visible to this process)"
           if {"cuda", "gpu"} & set(names) else "")
    reason = f"none of the platforms it names started{gpu}"
  if not platforms:
    return (f"JAX could not start its backends: {reason}. Uninstall or repair the failing JAX "
            "plugin, or set JAX_PLATFORMS=cpu to use the CPU alone.")
  return (f"JAX could not start JAX_PLATFORMS={platforms}: {reason}. Run where that hardware "
          "is, with its JAX plugin installed (pip install -U \"jax[cuda12]\" for NVIDIA GPUs, "
          f"\"jax[tpu]\" on a Cloud TPU VM), {_FIX}")


def start_backends(prog: str, status: int) -> None:
  """`starting_backends` with nothing to run first."""
  with starting_backends(prog, status):
    pass
