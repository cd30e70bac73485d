"""Command-line helpers shared by the entry points: flag parsing and errors, one line for an
out-of-memory error, libraries' log notices and Orbax's chatter kept quiet, and the check of a
batch size (the paths that flags name and the files that the commands write: output_files; the
cores this process may use: cpus)."""
from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import operator
import os
import re
import signal
import sys
import threading
import traceback
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn

from absl import flags

from llmimg_jax import output_files


def drop_log_records(logger: str, unwanted: Callable[[str], bool]) -> None:
  """Drops the records of `logger` whose message `unwanted` accepts: a library's notice that
  every command printed and that asks nothing of the user."""
  logging.getLogger(logger).addFilter(lambda record: not unwanted(record.getMessage()))


# JAX probes every platform it knows and logs "Unable to initialize backend 'tpu': ... Failed to
# open libtpu.so" on each CPU or GPU machine. Only that absence is dropped: a TPU that fails to
# start with its library present is still reported.
drop_log_records("jax._src.xla_bridge", lambda text: "Unable to initialize backend 'tpu'" in text
                 and "open libtpu.so" in text)


def error(prog: str, message: str) -> None:
  """Prints 'PROG: error: MESSAGE' to stderr, as argparse's and absl's parse errors begin."""
  print(f"{prog}: error: {message}", file=sys.stderr)


def at_least(least: int) -> Callable[[str], int]:
  """An argparse `type`: a whole number >= `least`, else a usage error naming the flag ('argument
  --rounds: 0: give 1 or more'), not a ZeroDivisionError or an empty median after compiling."""
  def whole_number(text: str) -> int:
    value = int(text)  # argparse: "invalid whole_number value: 'x'"
    if value < least:
      raise argparse.ArgumentTypeError(f"{value}: give {least} or more")
    return value
  return whole_number


def fail(prog: str, message: str, status: int) -> NoReturn:
  error(prog, message)
  sys.exit(status)


def check_cwd(prog: str) -> None:
  """A deleted current directory: one line and status 2 before anything runs, not a later
  library's FileNotFoundError (train.py blamed config.text.checkpoint for transformers')."""
  try:
    os.getcwd()
  except OSError as e:
    fail(prog, f"the current directory cannot be read ({e.strerror}; deleted?): cd to an "
         "existing one and rerun the command.", 2)


def fail_now(prog: str, message: str, status: int) -> NoReturn:
  """`fail` without Python's shutdown: after a signal interrupted JAX (an exception raised in a
  compile), the interpreter's teardown crashed with a segmentation fault (status 139)."""
  error(prog, message)
  logging.shutdown()  # flush the logs' handlers; stdout and stderr:
  for stream in (sys.stdout, sys.stderr):
    stream.flush()
  os._exit(status)  # pylint: disable=protected-access


class Terminated(BaseException):  # like KeyboardInterrupt: no `except Exception` swallows it
  """SIGTERM, raised by raise_terminated: `finally` blocks run (a staging folder is removed)."""


def raise_terminated(signum: int, frame: types.FrameType | None) -> NoReturn:
  del signum, frame
  raise Terminated


@contextlib.contextmanager
def ends_on_signal(prog: str, unfinished: str) -> Iterator[None]:
  """Ctrl-C or SIGTERM in the block: 'PROG: error: interrupted by Ctrl-C; UNFINISHED' ('stopped by
  SIGTERM; ...') and status 130 (143), not a traceback. The exit is fail_now's: a signal during
  an XLA compile crashed Python's shutdown after it."""
  previous = signal.signal(signal.SIGTERM, raise_terminated)
  resend_ignored_signals()  # kept after the block: quiet_orbax's hook, set in it, passes to it
  try:
    yield
  except KeyboardInterrupt:
    fail_now(prog, f"interrupted by Ctrl-C; {unfinished}", 128 + signal.SIGINT)
  except Terminated:
    fail_now(prog, f"stopped by SIGTERM; {unfinished}", 128 + signal.SIGTERM)
  finally:
    signal.signal(signal.SIGTERM, previous)


def resend_ignored_signals() -> None:
  """From now on, the signal of a KeyboardInterrupt or Terminated that Python ignored (raised
  in a gc callback, e.g. JAX's, or a __del__: about 1 in 10 Ctrl-Cs as evaluate.py began) is
  sent again, from a thread, to land in the main thread's code (sys.unraisablehook)."""
  sys.unraisablehook = functools.partial(_signal_again, sys.unraisablehook)


def _signal_again(passed_on: Callable[[Any], None], info: Any) -> None:
  if not isinstance(info.exc_value, (KeyboardInterrupt, Terminated)):
    return passed_on(info)
  if sys.is_finalizing():  # the command has ended; no thread can start
    return None
  signum = signal.SIGINT if isinstance(info.exc_value, KeyboardInterrupt) else signal.SIGTERM
  timer = threading.Timer(0.01, os.kill, (os.getpid(), signum))
  timer.daemon = True
  timer.start()


def only_apply(flags: Sequence[str]) -> str:
  """'--a only applies' for one flag, '--a, --b only apply' for more."""
  return f"{', '.join(flags)} only {'applies' if len(flags) == 1 else 'apply'}"


def them(flags: Sequence[str]) -> str:
  return "it" if len(flags) == 1 else "them"


def blank_flag(flag: str, var: str, fix: str, name: str | None = None) -> str:
  """The error for a blank `flag` (`name`: what is blank, if not the flag itself), read as not
  given otherwise: its likeliest cause, `flag=$var` with `var` unset, and `fix`."""
  return f"{name or flag} is blank (e.g. {flag}=${var} with {var} unset); {fix}."


# Lower sampling temperatures are greedy decoding (a logit gap of 1e-4 weighs e^100); near 0,
# float32 logits / temperature overflow to inf and NaN, and the draw picks the lowest token id.
MIN_TEMPERATURE = 1e-6
# Above float32's largest number (3.4028235e38) a scalar is inf on the device: a temperature's
# logits / inf are 0, or NaN for a token held back (-inf), which the draw then picks (EOS at
# once, past min_new_tokens).
FLOAT32_MAX = 3.4e38
FLOAT32_TINY = 1.2e-38  # float32's smallest normal number is 1.1754944e-38; devices may flush less
TEMPERATURES = f"from {MIN_TEMPERATURE:g} to {FLOAT32_MAX:g}"


def temperature_ok(temperature: float) -> bool:
  return MIN_TEMPERATURE <= temperature <= FLOAT32_MAX  # NaN fails both


def out_of_memory(e: BaseException, sizes: str) -> str | None:
  """One line for a MemoryError or XLA's RESOURCE_EXHAUSTED (a JaxRuntimeError) that names the
  error and the sizes to lower; None for any other error."""
  if not isinstance(e, MemoryError) and "RESOURCE_EXHAUSTED" not in str(e):
    return None
  detail = " ".join(str(e).split())[:200]
  return f"out of memory{f' ({detail})' if detail else ''}; lower {sizes}."


def _innermost(e: BaseException) -> str:
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  return " ".join(str(e.args[0] if e.args else e).replace("\\'", "'").split())


def quiet_orbax() -> None:
  """Orbax's INFO chatter off (its warnings stay; its errors end with their exception's first
  line, not its traceback: a save cut short by a full disk logged four, 325 lines above
  train.py's one line naming it). A failed read of a damaged or mismatched checkpoint can leave
  Orbax's sibling reads as never-awaited asyncio tasks (logged with full tracebacks and
  TensorStore specs) or callbacks into its closed event loop: hundreds of lines around the one
  error that names the path and the fix, so both are kept quiet."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.get_absl_handler().addFilter(_not_orbax_info)
  logging.getLogger("asyncio").addFilter(_not_orbax_task)
  sys.unraisablehook = functools.partial(_unraisable, sys.unraisablehook)


def _not_orbax_info(record: logging.LogRecord) -> bool:
  if "/orbax/" not in record.pathname:
    return True
  if record.exc_info and (error := record.exc_info[1]) is not None:
    line = (str(error).splitlines() or [""])[0]
    if line not in record.getMessage():  # e.g. 'Failed to remove checkpoint (PATH)'
      record.msg, record.args = f"{record.getMessage()} ({type(error).__name__}: {line})", None
    record.exc_info = record.exc_text = None
  return record.levelno >= logging.WARNING


# What a TensorStore read's task or error names: a spec, or the storage Orbax writes.
_TENSORSTORE_WORDS = ("TensorStore(", "OCDBT database", '"zarr" driver', '"zarr3" driver')


def _not_orbax_task(record: logging.LogRecord) -> bool:
  """asyncio's 'Task exception was never retrieved' for an Orbax read: the task names an Orbax
  file, or (a TensorStore future awaited by asyncio itself, seen under load) a TensorStore spec
  or the failed read of Orbax's storage."""
  text = record.getMessage()
  if record.exc_info and record.exc_info[2] is not None:
    text += "".join(f.filename for f in traceback.extract_tb(record.exc_info[2]))
  return "/orbax/" not in text and not any(w in text for w in _TENSORSTORE_WORDS)


def _unraisable(passed_on: Callable[[Any], None], info: Any) -> None:
  code = getattr(info.object, "cr_code", None)  # a coroutine's: an Orbax read never awaited
  orbax_read = code is not None and "/orbax/" in code.co_filename
  closed_loop = (isinstance(info.exc_value, RuntimeError)
                 and "Event loop is closed" in str(info.exc_value))
  if orbax_read or closed_loop:
    logging.getLogger(__name__).debug("Ignored after a failed read: %r", info.exc_value)
  else:
    passed_on(info)


def _config_argument(e: BaseException) -> str | None:
  """The --config flag's value ('FILE' or 'FILE:ARGS') as absl's parse of it got it, however it
  was spelt (--config FILE, -config=FILE, a --flagfile's line: the last one counts): the
  argument of the flag's parse that raised `e`, else that of its finished parse (whose file
  ml_collections reads later). None without a --config flag or value."""
  if "config" not in flags.FLAGS:
    return None
  flag, argument = flags.FLAGS["config"], None
  for frame, _ in traceback.walk_tb(e.__traceback__):
    names = frame.f_locals
    if names.get("self") is flag and isinstance(names.get("argument"), str):
      argument = names["argument"]
  if argument is None and flag.present:
    argument = getattr(flag, "config_filename", None)  # ml_collections' config flag's
  return argument if isinstance(argument, str) else None


def _config_path(argument: str | None) -> str | None:
  """The --config file's absolute path from the flag's argument (without its ':ARGS'); None
  without one or for a blank one."""
  if argument is None or not (path := argument.split(":", 1)[0]).strip():
    return None
  return os.path.abspath(path)


def _line_in(e: BaseException, path: str | None) -> str | None:
  """'FILE:LINE' where `e` arose in the file `path` (a SyntaxError names its own)."""
  if path is None:
    return None
  if isinstance(e, SyntaxError) and e.filename and os.path.abspath(e.filename) == path:
    return f"{e.filename}:{e.lineno}"
  lines = [f"{f.filename}:{f.lineno}" for f in traceback.extract_tb(e.__traceback__)
           if os.path.abspath(f.filename) == path]
  return lines[-1] if lines else None


def _raised_in_config_file(text: str, path: str | None) -> str | None:
  """ml_collections turns a TypeError or ValueError raised while loading the config file into a
  flag error that holds the formatted traceback: its exception line and 'FILE:LINE' in the file."""
  if "Traceback (most recent call last):" not in text:
    return None
  error = text.strip().splitlines()[-1].strip()
  lines = [f"{m[1]}:{m[2]}" for m in re.finditer(r'File "([^"]+)", line (\d+)', text)
           if path is not None and os.path.abspath(m[1]) == path]
  return f"{error} (at {lines[-1]})" if lines else error


_OVERRIDE = re.compile(r"-{1,2}(no)?config\.")  # ml_collections' pattern for an override


def _overrides(argv: list[str]) -> list[str]:
  """The --config.KEY overrides as ml_collections finds them: among the arguments with each
  --flagfile's lines in its place (absl's expansion), with one dash or two, --noKEY too."""
  try:
    args = flags.FLAGS.read_flags_from_files(argv[1:], force_gnu=False)
  except flags.Error:  # absl's own parse would have stopped on it first
    args = argv[1:]
  return [a for a in args if _OVERRIDE.match(a)]


def _failed_overrides(e: BaseException, overrides: list[str]) -> list[str]:
  """The overrides among `overrides` whose key ml_collections failed to look up (the `field_path`
  or `override` it was resolving when `e` arose); all of them if that cannot be told."""
  paths = set()
  for frame, _ in traceback.walk_tb(e.__traceback__):
    names = frame.f_locals
    paths.update(v for k in ("field_path", "override") if isinstance(v := names.get(k), str))
  failed = [a for a in overrides if _OVERRIDE.sub("", a.split("=", 1)[0], count=1) in paths]
  return failed or overrides


_NOT_A_NUMBER = re.compile(r"flag --([\w.]+)=(.*): (invalid literal for int\(\) with base 10|"
                           r"could not convert string to float): .*", re.S)


def _not_a_number(message: str) -> str | None:
  """absl's "flag --steps=1e3: invalid literal for int() with base 10: '1e3'" as what the flag
  takes and a value it would take (the config's, or the flag's default), or for a None where
  the command line takes none, where None goes; None for other errors."""
  if not (m := _NOT_A_NUMBER.fullmatch(message)):
    return None
  name, value = m[1], m[2]
  kind = "a whole number" if "int()" in m[3] else "a number"
  if value == "None" and "int()" in m[3]:  # e.g. train.keep_checkpoints (None: all)
    return (f"{message}. A number takes no None on the command line: set it to None in the "
            "--config file (where None is allowed), or give a number.")
  try:
    known = flags.FLAGS[name].value
  except KeyError:
    known = None
  if known is None:  # e.g. a placeholder(int): None is no value to give on the command line
    return f"--{name}={value}: not {kind}."
  whose = "the config has" if name.startswith("config.") else "its default is"
  return f"--{name}={value}: not {kind}; {whose} --{name}={known}."


def flags_parser(prog: str, required: Mapping[str, str] | None = None
                 ) -> Callable[[list[str]], list[str]]:
  """absl's flag parsing for app.run(flags_parser=...): a --config.KEY override naming no key,
  a flag value of the wrong type, or a config file that fails to load is one paragraph and exit
  status 2, not a traceback. `required`: for each flag marked required (by name, --config
  aside), the fix that ends its line when it is left out ("--workdir is required: FIX"; without
  one, the flag's help)."""
  def parse(argv: list[str]) -> list[str]:
    check_cwd(prog)  # paths in flags are from it
    try:
      remaining = flags.FLAGS(argv)
      if "config" in flags.FLAGS and flags.FLAGS["config"].present:
        flags.FLAGS["config"].value.keys()  # ml_collections defers an unreadable file to here
      return remaining
    except flags.Error as e:  # e.g. --config.train.steps=ten
      if "--config must have a value other than None" in str(e):
        if not flags.FLAGS["config"].present:  # absl's same words for a required flag left out
          fail(prog, "--config is required: name a config file, e.g. --config "
               "configs/shapes_quick.py (the configs are in the repository's configs/).", 2)
        fail(prog, f"the --config file {_config_path(_config_argument(e))}: its get_config() "
             "returned None (a missing return?).", 2)
      if m := re.match(r"flag --(\w+)=None: Flag --\1 must have a value other than None", str(e)):
        fix = (required or {}).get(m[1]) or flags.FLAGS[m[1]].help  # e.g. sample.py's --out
        fail(prog, f"--{m[1]} is required: {fix[:1].lower()}{fix[1:]}", 2)
      if raised := _raised_in_config_file(str(e), _config_path(_config_argument(e))):
        fail(prog, f"the --config file failed to load: {raised}", 2)
      if not_a_number := _not_a_number(str(e)):
        fail(prog, not_a_number, 2)
      fail(prog, str(e), 2)
    except Exception as e:  # an override's key, or the config file itself
      message, given = _innermost(e), _config_argument(e)
      path = _config_path(given)
      if where := _line_in(e, path):
        fail(prog, f"the --config file failed to load: {type(e).__name__}: {message} (at "
             f"{where})", 2)
      if isinstance(e, AttributeError) and e.name == "get_config" and path:  # ml_collections'
        fail(prog, f"the --config file {path} defines no get_config(): define one that returns "
             "the config (e.g. configs/shapes_quick.py's).", 2)
      if isinstance(e, OSError):  # ml_collections' "could not read the file"
        if given is not None and path is None:  # blank
          fail(prog, blank_flag("--config", "CONFIG", "name a config file, e.g. --config "
                                "configs/shapes_quick.py"), 2)
        if path and (why := output_files.why_closed(path, f"--config {path!r}")):
          fail(prog, why, 2)  # not "No such file"
        if ":" in (given or "") and os.path.isfile(given):  # read as FILE:ARGS
          fail(prog, f"the --config file {os.path.abspath(given)!r} has a ':' in its path, "
               "where FILE:ARGS begins the config's arguments: move or link it to a path "
               "without ':'.", 2)
        if path and not os.path.exists(path):  # its message: 3 lines
          fail(prog, f"could not load the --config file: No such file or directory: {path!r}; "
               "name an existing config file, e.g. --config configs/shapes_quick.py (the "
               "configs are in the repository's configs/, a relative path is from the current "
               "directory).", 2)
        fail(prog, f"could not load the --config file: {message}", 2)
      overrides = _overrides(argv)
      if not overrides:
        raise
      overrides = _failed_overrides(e, overrides)
      key, guess = _innermost(e), ""  # ml_collections': "'stepz' Did you mean "steps" instead..."
      if m := re.fullmatch(r"(.*) Did you mean (\S+) instead of \S+\?", key):
        key, guess = m[1], f" (did you mean {m[2]}?)"
      fail(prog, f"unknown config key {key} in {' '.join(overrides)}{guess}. A "
           "--config.KEY=VALUE override must name an existing key (see base_config in "
           "llmimg_jax/train/config.py).", 2)
  return parse


def as_int(value: Any) -> int | None:
  """`value` as an int (NumPy and JAX integer scalars too); None for a bool, float, str, etc."""
  if isinstance(value, bool):
    return None
  try:
    return operator.index(value)
  except TypeError:
    return None


def check_batch_size(batch_size: Any) -> None:
  """ValueError naming `batch_size` unless it is an int >= 1 (NumPy's too, bool not): a loop of
  range(0, n, batch_size) fails on 0 naming no argument, runs no batch for -1 and refuses 2.5
  unnamed."""
  if (number := as_int(batch_size)) is None or number < 1:
    raise ValueError(f"batch_size={batch_size} must be an int >= 1 (images per call of the "
                     "network).")
