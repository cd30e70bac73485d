"""Command-line helpers shared by train.py and evaluate.py."""
from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from absl import flags


def fail(prog: str, message: str, status: int) -> NoReturn:
  print(f"{prog}: error: {message}", file=sys.stderr)
  sys.exit(status)


def config_value(flag: Any, prog: str) -> Any:
  """The ConfigDict of a config_flags flag. ml_collections loads the file when it is first read,
  so a missing file or a get_config that raises surfaces here: one paragraph and status 2."""
  try:
    config = flag.value
    if config is None:
      raise ValueError("its get_config() returned None (a missing return?)")
    config.keys()  # a file that could not be read raises here (ml_collections' _ErrorConfig)
  except Exception as e:  # noqa: BLE001 - OSError, or whatever the config file raised
    fail(prog, f"could not load the --config file: {' '.join(str(e).split())}", 2)
  return config


def _innermost(e: BaseException) -> str:
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  return " ".join(str(e.args[0] if e.args else e).replace("\\'", "'").split())


def flags_parser(prog: str) -> Callable[[list[str]], list[str]]:
  """absl's flag parsing for app.run(flags_parser=...): a --config.KEY override naming no key,
  or a flag value of the wrong type, is one line and exit status 2, not a traceback."""
  def parse(argv: list[str]) -> list[str]:
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:  # e.g. --config.train.steps=ten
      fail(prog, str(e), 2)
    except Exception as e:  # noqa: BLE001 - an override's key, or the config file's get_config
      overrides = [a for a in argv[1:] if a.startswith("--config.")]
      key = re.match(r"'([^']*)'", _innermost(e))
      if isinstance(e, (AttributeError, KeyError)) and key and any(
          key[1] in o.split("=")[0].split(".") for o in overrides):
        fail(prog, f"unknown config key {_innermost(e)} in {' '.join(overrides)}. A "
             "--config.KEY=VALUE override must name an existing key (see base_config in "
             "llmimg_jax/train/config.py).", 2)
      frames = traceback.extract_tb(e.__traceback__)  # the config file's line, not a library's
      where = ([f for f in frames if "site-packages" not in f.filename] or frames)[-1]
      fail(prog, f"the --config file failed to load: {type(e).__name__}: {e} (at "
           f"{where.filename}:{where.lineno})", 2)
  return parse
