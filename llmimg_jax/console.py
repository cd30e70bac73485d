"""The command-line tools' output: a write that fails never undoes the work done.

A path's bytes that are not UTF-8 are written back as they were (Python holds them as
surrogates); characters stdout's encoding lacks (PYTHONIOENCODING=ascii, a latin-1 locale), as
backslash escapes. A stdout that fails (its pipe's reader gone, a full disk) is named once on
stderr and the rest of the output dropped. Without this, sample.py, evaluate.py and the text CLI
raised UnicodeEncodeError or BrokenPipeError at a print after the work (exit 1; evaluate.py's
results file then unwritten); train.py's progress bar on a pipe without its reader (`2>&1 |
tee log`, tee killed) ended the run with status 1, without saving.
"""
from __future__ import annotations

import codecs
import contextlib
import functools
import io
import logging
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

_ERRORS = "llmimg_jax.as_given"
log = logging.getLogger(__name__)


def _as_given_or_escaped(e: UnicodeError) -> tuple[str | bytes, int]:
  if isinstance(e, UnicodeEncodeError) and all(
      0xDC80 <= ord(c) <= 0xDCFF for c in e.object[e.start:e.end]):
    return codecs.lookup_error("surrogateescape")(e)
  return codecs.lookup_error("backslashreplace")(e)


codecs.register_error(_ERRORS, _as_given_or_escaped)


class Unbroken:
  """`stream` whose first failed write or flush (its pipe's reader gone, a full disk) ends its
  output, not the program: `failed(error)` is called once, the rest is dropped, and the stream's
  descriptor is pointed at os.devnull (_to_devnull: what it still buffers then goes there at
  exit, where Python's own flush made the exit status 120)."""

  def __init__(self, stream: Any, failed: Callable[[OSError], None]):
    self.stream, self._failed = stream, failed
    self.error: OSError | None = None

  def write(self, text: str) -> int:
    self._guarded(self.stream.write, text)
    return len(text)

  def writelines(self, lines: Iterable[str]) -> None:
    self._guarded(self.stream.writelines, lines)

  def flush(self) -> None:
    self._guarded(self.stream.flush)

  def _guarded(self, fn: Callable[..., Any], *args: Any) -> None:
    if self.error is not None:
      return
    try:
      fn(*args)
    except OSError as e:
      self.error = e
      _to_devnull(self.stream)
      self._failed(e)

  def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno: the stream's
    if name == "stream":  # not set (copy.copy's bare instance): not a recursion
      raise AttributeError(name)
    return getattr(self.stream, name)


def _same_file(fd: int, stat: os.stat_result) -> bool:
  try:
    return os.path.samestat(os.fstat(fd), stat)
  except OSError:  # closed
    return False


def _to_devnull(stream: Any) -> None:
  """`stream`'s descriptor, and stdout's and stderr's where they write to the same file (`2>&1`),
  pointed at os.devnull: every other write there (a log record, TFDS's progress bar) failed too."""
  try:
    fd = stream.fileno()
    broken = os.fstat(fd)
  except (OSError, ValueError, AttributeError):  # no descriptor (UnsupportedOperation: both)
    return
  try:
    null = os.open(os.devnull, os.O_WRONLY)
  except OSError:  # no descriptor left, no /dev/null: the writes there keep failing, dropped
    return
  for each in {fd} | {f for f in (1, 2) if _same_file(f, broken)}:
    os.dup2(null, each)
  os.close(null)


def _warn(prog: str, e: OSError) -> None:
  try:  # stderr may be on the same broken pipe
    print(f"{prog}: warning: could not write to stdout ({e.strerror or e}); the rest of its "
          "output is dropped.", file=sys.stderr, flush=True)
  except (OSError, ValueError):
    pass


def bar_file(what: str, stream: Any = None) -> Unbroken:
  """A progress bar's file (`stream`, default sys.stderr): a draw that fails (its pipe's reader
  gone, a full disk) ends the bar's output with a warning, not the training or build."""
  def stop_drawing(e: OSError) -> None:
    log.warning("The %s progress bar is not drawn from now on: writing it failed (%s).", what, e)
  return Unbroken(sys.stderr if stream is None else stream, stop_drawing)


def bars_guarded(what: str) -> contextlib.AbstractContextManager:
  """stderr as bar_file's for what runs inside (a TFDS build, whose bars and ours draw there):
  a draw that fails (`2>&1 | tee log`, tee killed) ended the build (hours for a big folder)."""
  return contextlib.redirect_stderr(bar_file(what))


def guard_stdout(prog: str) -> None:
  """Installs the stdout above (a tool's first call, before it prints)."""
  if isinstance(sys.stdout, io.TextIOWrapper):
    sys.stdout.reconfigure(errors=_ERRORS)
    sys.stdout = Unbroken(sys.stdout, functools.partial(_warn, prog))


def stdout_error() -> OSError | None:
  """The error that stopped stdout, once flushed; None if all was written (or not guarded)."""
  if not isinstance(sys.stdout, Unbroken):
    return None
  sys.stdout.flush()
  return sys.stdout.error
