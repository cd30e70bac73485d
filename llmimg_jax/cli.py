"""Command-line helpers shared by train.py and evaluate.py."""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

from absl import flags


def fail(prog: str, message: str, status: int) -> NoReturn:
  print(f"{prog}: error: {message}", file=sys.stderr)
  sys.exit(status)


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
    except (AttributeError, KeyError) as e:  # ml_collections' config_flags: no such key
      overrides = [a for a in argv[1:] if a.startswith("--config.")]
      fail(prog, f"unknown config key {_innermost(e)} in {' '.join(overrides)}. A "
           "--config.KEY=VALUE override must name an existing key (see base_config in "
           "llmimg_jax/train/config.py).", 2)
    except flags.Error as e:  # e.g. --config.train.steps=ten
      fail(prog, str(e), 2)
  return parse
