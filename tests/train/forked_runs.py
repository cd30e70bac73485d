"""Many short runs of a CLI script (train.py's config errors), each in a child forked from one
process that imported the package once: such a run took ~2.1 s of CPU, most of it importing
jax, flax, Orbax, grain and TFDS again; ~0.7 s forked (11 runs of one config error: 10.0 s of CPU
with the server's imports, 1 run 3.4 s).

Each child is `python SCRIPT ARGS...` from there on: its own stdout and stderr, sys.argv, stdin
(/dev/null); the script runs as __main__ and the child exits as the interpreter does (a
SystemExit's status, 1 and the traceback for an exception, atexit handlers). What differs from a
new process: the modules were imported before the script parsed its flags (train.py imports most
of them after), once, in the runs' shared folder, environment and sys.path, with no thread but the
main one and no JAX backend started (both checked); what the imports printed heads every run's
output, as it would in a new process.

  python tests/train/forked_runs.py PARALLEL TIMEOUT_S MODULE...   # jobs on stdin (JSON); prints
                                                # each job's exit status (JSON, None: timed out)
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class Finished:
  returncode: int | None  # None: killed after the timeout
  output: str  # stdout and stderr together


def run_forked(argvs: list[list[str]], cwd: str | os.PathLike, modules: list[str],
               env: dict[str, str], parallel: int = 2, timeout: float = 120.0) -> list[Finished]:
  """Runs `python *argv` in `cwd` for each argv (one script), `parallel` at a time, each killed
  after `timeout` seconds, in children of one server that imported `modules` under `env`."""
  assert len({argv[0] for argv in argvs}) == 1, argvs
  with tempfile.TemporaryDirectory() as outputs:
    jobs = [{"argv": argv, "out": os.path.join(outputs, str(i))} for i, argv in enumerate(argvs)]
    server = subprocess.Popen([sys.executable, __file__, str(parallel), str(timeout), *modules],
                              env=env, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
      out, err = server.communicate(json.dumps(jobs), timeout=timeout * len(jobs) / parallel + 60)
    finally:
      if server.poll() is None:  # the server and any child of it still running
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    *imports_out, codes = out.splitlines() or [""]
    if server.returncode:
      raise AssertionError(f"the fork server failed ({server.returncode}):\n{out[-2000:]}"
                           f"{err[-3000:]}")
    printed = "".join(line + "\n" for line in imports_out) + err  # by the imports
    return [Finished(code, printed + Path(job["out"]).read_text(errors="replace")
                     + ("" if code is not None else f"\n[killed after {timeout} s]"))
            for code, job in zip(json.loads(codes), jobs)]


def _become(job: dict[str, Any]) -> None:
  """This child as `python ARGV...`, writing to job's output file."""
  out = os.open(job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
  os.dup2(out, 1)
  os.dup2(out, 2)
  os.close(out)
  devnull = os.open(os.devnull, os.O_RDONLY)
  os.dup2(devnull, 0)
  os.close(devnull)
  sys.argv = list(job["argv"])


def _serve(parallel: int, timeout: float, modules: list[str]) -> None:
  jobs = json.load(sys.stdin)
  sys.path[0] = os.path.dirname(os.path.abspath(jobs[0]["argv"][0]))  # as `python SCRIPT`'s
  for module in modules:
    importlib.import_module(module)
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  assert not xla_bridge.backends_are_initialized(), "a backend started before forking"
  assert threading.active_count() == 1, f"threads started before forking: {threading.enumerate()}"
  codes: dict[int, int | None] = {}
  running: dict[int, tuple[int, float]] = {}  # pid -> (job index, deadline)
  pending = list(enumerate(jobs))
  while pending or running:
    while pending and len(running) < parallel:
      index, job = pending.pop(0)
      sys.stdout.flush()
      sys.stderr.flush()
      if (pid := os.fork()) == 0:
        _become(job)
        runpy.run_path(sys.argv[0], run_name="__main__")
        sys.exit(0)  # the script returned: exit as `python SCRIPT` would, finalising normally
      running[pid] = (index, time.monotonic() + timeout)
    pid, status = os.waitpid(-1, os.WNOHANG)
    if pid:
      codes[running.pop(pid)[0]] = os.waitstatus_to_exitcode(status)
      continue
    for pid, (index, deadline) in list(running.items()):
      if time.monotonic() > deadline:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        codes[running.pop(pid)[0]] = None
    time.sleep(0.02)
  print(json.dumps([codes[i] for i in range(len(jobs))]))


if __name__ == "__main__":
  _serve(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:])
