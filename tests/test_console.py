"""The tools' guarded stdout (llmimg_jax.console): what stdout cannot encode is escaped, a stdout
that fails (a full disk, its pipe's reader gone) is named once on stderr, and neither turns work
done into an error."""
from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
from pathlib import Path

from tests.sample.utils import one_device_env

_PRINTS = """
import os, sys
from llmimg_jax import console
console.guard_stdout("tool")
print("caf\\u00e9", os.fsdecode(b"\\xe9.png"), flush=True)
for i in range(20000):
  print("line", i)
print("stdout_error:", repr(console.stdout_error()), file=sys.stderr)
"""


def _prints(stdout, **env: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-c", _PRINTS], stdout=stdout, stderr=subprocess.PIPE,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), **env))


def test_characters_stdout_cannot_encode_are_escaped_and_paths_written_as_given():
  proc = _prints(subprocess.PIPE, PYTHONIOENCODING="ascii")
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err.decode(errors="replace")
  assert out.startswith(b"caf\\xe9 \xe9.png\nline 0\n") and out.endswith(b"line 19999\n")
  assert err == b"stdout_error: None\n"


def test_a_failing_stdout_is_named_once_and_the_rest_dropped():
  with open("/dev/full", "wb") as device:
    full = _prints(device)
  broken = _prints(subprocess.PIPE)
  broken.stdout.close()  # its reader gone before the first write
  for proc, why in ((full, "No space left on device"), (broken, "Broken pipe")):
    err = proc.communicate(timeout=60)[1].decode()
    assert proc.returncode == 0, err
    lines = err.splitlines()
    assert lines[0] == (f"tool: warning: could not write to stdout ({why}); the rest of its "
                        "output is dropped."), err
    assert len(lines) == 2 and lines[1].startswith("stdout_error: ") and why in lines[1], err


def test_what_stdout_holds_for_a_pipe_without_its_reader_at_exit_is_dropped():
  """Python's own flush of stdout at exit failed: 'Exception ignored ... BrokenPipeError', status
  120 (train.py's, after a run that saved and ended well)."""
  script = ("import sys; from llmimg_jax import console; console.guard_stdout('tool'); "
            "sys.stdin.read(); print('left in the buffer')")
  proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(
                              os.environ, PYTHONPATH=str(Path(__file__).parents[1]),
                              PYTHONUNBUFFERED=""))
  proc.stdout.close()
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err.decode()
  assert err.decode() == ("tool: warning: could not write to stdout (Broken pipe); the rest of "
                          "its output is dropped.\n")


def test_sample_py_prints_a_path_stdout_cannot_encode_after_writing_its_samples(run, tmp_path):
  """Its last line, naming --out, was a UnicodeEncodeError under an ASCII stdout: exit 1, the
  samples written."""
  out = tmp_path / "samples_\u00e9"
  proc = subprocess.run(
      [sys.executable, str(Path(__file__).parents[1] / "sample.py"), "--workdir",
       str(run.workdir), "--out", str(out), "--prompt", "a red circle", "--num_per_prompt", "1"],
      env={**one_device_env(), "PYTHONIOENCODING": "ascii"}, capture_output=True, timeout=120)
  assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
  assert proc.stdout.endswith(f" -> {tmp_path}/samples_\\xe9\n".encode()), proc.stdout
  assert (out / "p0000_s000.png").is_file() and (out / "samples.jsonl").is_file()


def test_an_unbroken_stream_guards_writelines_and_copies():
  """writelines went to the stream unguarded, and copy.copy recursed in __getattr__."""
  from llmimg_jax import console

  class Full(io.StringIO):
    def write(self, text: str) -> int:
      raise OSError(28, "No space left on device")

    def writelines(self, lines) -> None:
      raise OSError(28, "No space left on device")

  failed = []
  stream = console.Unbroken(Full(), failed.append)
  stream.writelines(["a\n", "b\n"])
  assert stream.write("c") == 1 and [e.errno for e in failed] == [28]
  assert copy.copy(stream).stream is stream.stream
