"""The command-line tools' stdout: a print that cannot be written never undoes the work done.

A path's bytes that are not UTF-8 are written back as they were (Python holds them as
surrogates); characters stdout's encoding lacks (PYTHONIOENCODING=ascii, a latin-1 locale), as
backslash escapes. A stdout that fails (its pipe's reader gone, a full disk) is named once on
stderr and the rest of the output dropped. Without this, sample.py, evaluate.py and the text CLI
raised UnicodeEncodeError or BrokenPipeError at a print after the work (exit 1; evaluate.py's
results file then unwritten).
"""
from __future__ import annotations

import codecs
import io
import os
import sys
from collections.abc import Callable
from typing import Any

_ERRORS = "llmimg_jax.as_given"


def _as_given_or_escaped(e: UnicodeError) -> tuple[str | bytes, int]:
  if isinstance(e, UnicodeEncodeError) and all(
      0xDC80 <= ord(c) <= 0xDCFF for c in e.object[e.start:e.end]):
    return codecs.lookup_error("surrogateescape")(e)
  return codecs.lookup_error("backslashreplace")(e)


codecs.register_error(_ERRORS, _as_given_or_escaped)


class _Stdout:
  """sys.stdout, whose first failed write or flush is named on stderr; later output is dropped."""

  def __init__(self, stream: io.TextIOWrapper, prog: str):
    self._stream, self._prog = stream, prog
    self.error: OSError | None = None

  def write(self, text: str) -> int:
    self._guarded(self._stream.write, text)
    return len(text)

  def flush(self) -> None:
    self._guarded(self._stream.flush)

  def _guarded(self, fn: Callable[..., Any], *args: Any) -> None:
    if self.error is not None:
      return
    try:
      fn(*args)
    except OSError as e:
      self.error = e
      try:  # the interpreter's flush at exit then writes what is buffered to nothing
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, self._stream.fileno())
        os.close(null)
      except (OSError, ValueError):
        pass
      print(f"{self._prog}: warning: could not write to stdout ({e.strerror or e}); the rest "
            "of its output is dropped.", file=sys.stderr, flush=True)

  def __getattr__(self, name: str) -> Any:
    return getattr(self._stream, name)


def guard_stdout(prog: str) -> None:
  """Installs the stdout above (a tool's first call, before it prints)."""
  if isinstance(sys.stdout, io.TextIOWrapper):
    sys.stdout.reconfigure(errors=_ERRORS)
    sys.stdout = _Stdout(sys.stdout, prog)


def stdout_error() -> OSError | None:
  """The error that stopped stdout, once flushed; None if all was written (or not guarded)."""
  if not isinstance(sys.stdout, _Stdout):
    return None
  sys.stdout.flush()
  return sys.stdout.error
