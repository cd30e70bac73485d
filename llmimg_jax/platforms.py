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

_XLA_BRIDGE = os.path.join("jax", "_src", "xla_bridge.py")  # where JAX starts its backends
_JAX_HINT = re.compile(r"\s*\((set|you may need to) [^()]*\)$")  # JAX's own fix, replaced by ours


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
    frames = traceback.extract_tb(e.__traceback__)
    if not frames or not frames[-1].filename.endswith(_XLA_BRIDGE):
      raise
    cli.fail(prog, start_error(e, jax.config.jax_platforms or ""), status)


def start_error(e: BaseException, platforms: str) -> str:
  """The line for error `e` of JAX's backends' start under JAX_PLATFORMS=`platforms` ('' unset)."""
  reason = _JAX_HINT.sub("", " ".join(str(e).split())).rstrip(".")
  if not reason:  # JAX's assertion that some backend started: cuda skipped without a GPU
    gpu = " (no NVIDIA GPU is visible to this process)" if "cuda" in platforms.split(",") else ""
    reason = f"none of the platforms it names started{gpu}"
  if not platforms:
    return (f"JAX could not start its backends: {reason}. Uninstall or repair the failing JAX "
            "plugin, or set JAX_PLATFORMS=cpu to use the CPU alone.")
  return (f"JAX could not start JAX_PLATFORMS={platforms}: {reason}. Run where that hardware "
          "is, with its JAX plugin installed (pip install -U \"jax[cuda12]\" for NVIDIA GPUs, "
          "\"jax[tpu]\" on a Cloud TPU VM), or unset JAX_PLATFORMS (JAX then takes what this "
          "machine has, the CPU at least).")


def start_backends(prog: str, status: int) -> None:
  """`starting_backends` with nothing to run first."""
  with starting_backends(prog, status):
    pass
