"""Running train.py in subprocesses that reuse the test session's compilation cache (several as
the hosts of one jax.distributed run: a free port, each host's devices); folders the CLIs cannot
write, or enter."""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).parents[2]
CONFIG_FILE = str(Path(__file__).parent / "tiny_config_file.py")


def env(**extra: str) -> dict[str, str]:
  """This process's environment (8 simulated devices) plus its persistent compilation cache."""
  e = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]), JAX_PLATFORMS="cpu")
  cache = jax.config.jax_compilation_cache_dir
  if cache:
    e.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  e.update(extra)
  return e


def _devices_env(n: int) -> dict[str, str]:
  """env() extras for one of several processes of a jax.distributed run, each with n CPU
  devices."""
  # Process 0 compiles and sends the executable to process 1 (half the compile time on CPU).
  # Without the persistent cache: its keys differ between the processes, so process 0 would
  # load a program that process 1 then compiles, or waits for forever.
  # The other XLA flags stay those of the in-process reference (tests/conftest.py): codegen
  # options change float results in the last bits.
  xla_flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
  return {"XLA_FLAGS": " ".join(xla_flags), "JAX_NUM_CPU_DEVICES": str(n),
          "JAX_SHARE_BINARY_BETWEEN_HOSTS": "1", "JAX_ENABLE_COMPILATION_CACHE": "false"}


def _free_port() -> int:
  """A local port for a jax.distributed coordinator, kept from other processes until it binds it.

  A port merely bound and closed could be handed to another bind(("", 0)) (another test's gloo
  listener or coordinator) before the coordinator's process starts, seconds later: it would exit
  with 'Failed to start RPC server'. This one is left in TIME_WAIT (its side of a connection
  closes first) for 60 s, in which the kernel hands it to no other bind to port 0; the
  coordinator's gRPC server binds it regardless (SO_REUSEADDR, set here too).
  """
  with socket.socket() as server, socket.socket() as client:
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client.connect(server.getsockname())
    accepted, _ = server.accept()
    accepted.close()  # before the client's end: this port's end of the connection waits
    return server.getsockname()[1]


def flags(changes: dict[str, object]) -> tuple[str, ...]:
  """train.py's --config.a.b=value flags for {"a.b": value} (apply the same dict in process with
  ConfigDict.update_from_flattened_dict)."""
  return tuple(f"--config.{key}={value}" for key, value in changes.items())


def train_args(data_dir, workdir, *overrides: str) -> list[str]:
  return [sys.executable, str(ROOT / "train.py"), f"--config={CONFIG_FILE}:{data_dir}",
          f"--workdir={workdir}", *overrides]


# A command's prefix: SIGINT heeded, as from a shell, then the command (exec keeps it so).
# Not a preexec_fn: Python code between fork and exec in a process with JAX's threads may hang.
HEED_CTRL_C = [sys.executable, "-c", "import os, signal, sys; "
               "signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"]


class Proc:
  """A train.py subprocess whose stderr (logs, tqdm bar) is collected as it comes."""

  def __init__(self, args: list[str], cwd: str | os.PathLike | None = None,
               ctrl_c: bool = False, **env_extra: str):
    """`ctrl_c`: SIGINT as from a shell (pytest-xdist's workers ignore it, and so would a child,
    whose Python then raises no KeyboardInterrupt)."""
    self.popen = subprocess.Popen([*HEED_CTRL_C, *args] if ctrl_c else args,
                                  env=env(**env_extra), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, cwd=cwd)
    self._chunks: list[bytes] = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self) -> None:
    with self.popen.stdout:  # closed at the end of the output (the process's exit)
      while chunk := self.popen.stdout.read1(4096):
        self._chunks.append(chunk)

  @property
  def output(self) -> str:
    return b"".join(self._chunks).decode(errors="replace")

  def wait_for(self, predicate, timeout: float = 240.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not predicate():
      if self.popen.poll() is not None:
        raise AssertionError(f"train.py exited ({self.popen.returncode}) before {what}:\n"
                             f"{self.output[-3000:]}")
      if time.monotonic() > end:
        self.popen.kill()
        raise AssertionError(f"Timed out waiting for {what}:\n{self.output[-3000:]}")
      time.sleep(0.05)

  def finish(self, timeout: float = 300.0) -> int:
    try:
      rc = self.popen.wait(timeout)
    except subprocess.TimeoutExpired:
      self.popen.kill()
      raise
    self._reader.join(10)
    return rc


def finished_steps(workdir) -> list[int]:
  """Finalized checkpoint steps (Orbax renames a step's tmp dir to its number when complete)."""
  d = Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


@contextlib.contextmanager
def unwritable(folder: Path):
  """`folder` made unwritable for this process: by its mode, or (as root, whom modes do not stop)
  by the immutable attribute."""
  if os.geteuid() != 0:
    folder.chmod(0o555)
    undo = functools.partial(folder.chmod, 0o755)
  elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
    pytest.skip("root without chattr +i: cannot make a folder unwritable")
  else:
    undo = functools.partial(subprocess.run, ["chattr", "-i", str(folder)], check=True)
  try:
    yield
  finally:
    undo()


# The capabilities that let root past a folder's mode bits; without them its modes hold for root.
_MODE_OVERRIDES = "-dac_override,-dac_read_search"


def modes_hold() -> list[str] | None:
  """A command prefix under which a folder's mode bits stop the command: none for a user, as
  root setpriv without the capabilities that pass them; None where that cannot be (no setpriv,
  or not allowed to drop capabilities)."""
  if os.geteuid() != 0:
    return []
  prefix = ["setpriv", f"--bounding-set={_MODE_OVERRIDES}", f"--inh-caps={_MODE_OVERRIDES}"]
  if shutil.which("setpriv") is None or subprocess.run([*prefix, "true"]).returncode:
    return None
  return prefix


def as_modes_hold() -> list[str]:
  """modes_hold(), or the test skipped where modes cannot stop this process."""
  if (prefix := modes_hold()) is None:
    pytest.skip("root without setpriv, or not allowed to drop capabilities (CAP_SETPCAP): a "
                "folder's mode cannot keep this process out")
  return prefix


@contextlib.contextmanager
def closed(folder: Path):
  """`folder` with mode 000: nobody enters it under modes_hold()."""
  folder.chmod(0o000)
  try:
    yield
  finally:
    folder.chmod(0o755)
