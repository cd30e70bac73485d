"""Many short runs of a CLI script (train.py's config errors), each in a child forked from one
process that imported the package once: such a run took ~2 s of CPU, nearly all of it importing
jax, flax, Orbax, grain and TFDS again; ~0.3 s forked.

Each child is `python SCRIPT ARGS...` from there on: its own working directory, stdout and stderr,
sys.argv and sys.path[0]; the script runs as __main__ and the child exits as the interpreter does
(a SystemExit's status, 1 and the traceback for an exception, atexit handlers). What differs from a
new process is only that the modules were imported before it started, in the server's
environment (every child's: one per run_forked call), with no JAX backend started (checked).

  python tests/train/forked_runs.py MODULE...   # imports MODULEs; jobs on stdin (JSON), then
                                                # prints each job's exit status (JSON)
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path


@dataclasses.dataclass
class Finished:
  returncode: int
  output: str  # stdout and stderr together


def run_forked(argvs: list[list[str]], cwd: str | os.PathLike, modules: list[str],
               env: dict[str, str], parallel: int = 2, timeout: float = 300.0) -> list[Finished]:
  """Runs `python *argv` for each argv, `parallel` at a time, in children of one server that
  imported `modules` under `env`."""
  with tempfile.TemporaryDirectory() as outputs:
    jobs = [{"argv": argv, "cwd": str(cwd), "out": os.path.join(outputs, str(i))}
            for i, argv in enumerate(argvs)]
    server = subprocess.run([sys.executable, __file__, str(parallel), *modules], env=env,
                            input=json.dumps(jobs), capture_output=True, text=True,
                            timeout=timeout)
    if server.returncode:
      raise AssertionError(f"the fork server failed ({server.returncode}):\n"
                           f"{server.stdout[-2000:]}{server.stderr[-3000:]}")
    codes = json.loads(server.stdout.splitlines()[-1])
    return [Finished(code, Path(job["out"]).read_text(errors="replace"))
            for code, job in zip(codes, jobs)]


def _become(job: dict) -> None:
  """This child as `python ARGV...` in job's folder, writing to job's output file."""
  os.chdir(job["cwd"])
  out = os.open(job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
  os.dup2(out, 1)
  os.dup2(out, 2)
  os.close(out)
  os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
  sys.argv = list(job["argv"])
  sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))


def _serve(parallel: int, modules: list[str]) -> None:
  for module in modules:
    importlib.import_module(module)
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  assert not xla_bridge.backends_are_initialized(), "a backend started before forking"
  jobs = json.load(sys.stdin)
  codes: dict[int, int] = {}
  running: dict[int, int] = {}  # pid -> job index
  for index, job in enumerate(jobs):
    while len(running) >= parallel:
      pid, status = os.wait()
      codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
      _become(job)
      runpy.run_path(sys.argv[0], run_name="__main__")
      sys.exit(0)  # the script returned: exit as `python SCRIPT` would, finalising normally
    running[pid] = index
  while running:
    pid, status = os.wait()
    codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
  print(json.dumps([codes[i] for i in range(len(jobs))]))


if __name__ == "__main__":
  _serve(int(sys.argv[1]), sys.argv[2:])
