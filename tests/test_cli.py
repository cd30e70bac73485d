"""llmimg_jax.cli.quiet_orbax: its filters of Orbax's INFO logs and of asyncio's reports of
abandoned Orbax reads, and its unraisable-exception hook; cli.flags_parser's errors."""
import asyncio
import logging
import re
import subprocess
import sys

import pytest

from llmimg_jax import cli
from tests.train.cli_utils import ROOT, env


def _never_retrieved(error: Exception) -> logging.LogRecord:
  """asyncio's record of a task whose exception nobody awaited (as base_events logs it)."""
  async def fail():
    raise error
  loop = asyncio.new_event_loop()
  try:
    task = loop.create_task(fail())
    loop.run_until_complete(asyncio.wait([task]))
  finally:
    loop.close()
  exc = task.exception()
  return logging.LogRecord("asyncio", logging.ERROR, "base_events.py", 1771,
                           "Task exception was never retrieved\nfuture: %r", (task,),
                           (type(exc), exc, exc.__traceback__))


def test_abandoned_tensorstore_reads_are_dropped_and_other_errors_kept():
  # Seen under load after a failed restore of a checkpoint with deleted array files.
  read = ValueError('NOT_FOUND: Error opening "zarr" driver: Error reading "ema_params.conv.bias/'
                    '.zarray" in OCDBT database at local file "/tmp/run/checkpoints/2/state/"')
  assert not cli._not_orbax_task(_never_retrieved(read))
  assert cli._not_orbax_task(_never_retrieved(ValueError("a bug in our own code")))


_ORBAX_FILE = "/venv/lib/python3.12/site-packages/orbax/checkpoint/_src/checkpointers/async.py"


def _record(levelno: int, pathname: str) -> logging.LogRecord:
  return logging.LogRecord("absl", levelno, pathname, 1, "saving step %d", (3,), None)


def _unraisable_from(code: str, filename: str, error: Exception) -> None:
  """A real unraisable exception: a coroutine defined in `filename`, suspended in its try, is
  garbage-collected and its finally raises `error` (Python passes the coroutine as the object)."""
  namespace = {"types": __import__("types"), "error": error}
  exec(compile(code, filename, "exec"), namespace)
  coro = namespace["read"]()
  coro.send(None)  # suspended inside the try
  del coro  # close() -> GeneratorExit -> the finally raises -> sys.unraisablehook


_SUSPENDING = ("@types.coroutine\ndef _suspend():\n  yield\n\n\n"
               "async def read():\n  try:\n    await _suspend()\n  finally:\n    raise error\n")


def test_quiet_orbax_installs_its_filters_and_hook(monkeypatch):
  """After quiet_orbax(): absl's handler drops Orbax's INFO records but keeps its warnings and
  everyone else's INFO; asyncio's logger drops never-retrieved Orbax reads; the unraisable hook
  drops an abandoned Orbax coroutine and a callback into a closed event loop and passes every
  other unraisable exception to the hook it replaced (Python's default, or ends_on_signal's)."""
  from absl import logging as absl_logging
  handler = absl_logging.get_absl_handler()
  asyncio_logger = logging.getLogger("asyncio")
  monkeypatch.setattr(handler, "filters", list(handler.filters))
  monkeypatch.setattr(asyncio_logger, "filters", list(asyncio_logger.filters))
  passed_on = []
  monkeypatch.setattr(sys, "unraisablehook", passed_on.append)  # restored after the test

  cli.quiet_orbax()

  assert not handler.filter(_record(logging.INFO, _ORBAX_FILE))
  assert not handler.filter(_record(logging.DEBUG, _ORBAX_FILE))
  assert handler.filter(_record(logging.WARNING, _ORBAX_FILE))  # its warnings stay
  assert handler.filter(_record(logging.ERROR, _ORBAX_FILE))
  assert handler.filter(_record(logging.INFO, "/repo/llmimg_jax/train/loop.py"))  # ours stay
  # An error of its save threads is its line alone (train.py's error names it, and the fix); four
  # such tracebacks came to 325 lines on a full disk. Ours keep theirs.
  for pathname, traceback_kept in ((_ORBAX_FILE, False), ("/repo/llmimg_jax/loop.py", True)):
    try:
      raise ValueError("RESOURCE_EXHAUSTED: No space left on device")
    except ValueError as e:
      record = logging.LogRecord("absl", logging.ERROR, pathname, 1, "save failed: %s", (e,),
                                 sys.exc_info())
    assert handler.filter(record)
    first, *rest = handler.format(record).splitlines()
    assert first.endswith("] save failed: RESOURCE_EXHAUSTED: No space left on device"), first
    assert (rest[:1] == ["Traceback (most recent call last):"]) == traceback_kept, rest
  try:  # a message without the error (Orbax's 'Failed to remove checkpoint (%s)') gets its line
    raise PermissionError(13, "Permission denied")
  except PermissionError:
    record = logging.LogRecord("absl", logging.ERROR, _ORBAX_FILE, 1, "Failed to remove %s",
                               ("/run/checkpoints/2",), sys.exc_info())
  assert handler.filter(record) and handler.format(record).endswith(
      "] Failed to remove /run/checkpoints/2 (PermissionError: [Errno 13] Permission denied)")

  orbax_read = ValueError("NOT_FOUND: Error reading in OCDBT database at local file "
                          '"/tmp/run/checkpoints/2/state/"')
  assert not asyncio_logger.filter(_never_retrieved(orbax_read))
  assert asyncio_logger.filter(_never_retrieved(ValueError("a bug in our own code")))

  errors = [ValueError("an abandoned read"), RuntimeError("Event loop is closed"),
            ValueError("our own bug"), RuntimeError("loop busy")]
  def ours() -> list[str]:  # not an earlier test's object that a collection here finalized
    return [str(info.exc_value) for info in passed_on if any(info.exc_value is e for e in errors)]
  _unraisable_from(_SUSPENDING, "/site-packages/orbax/checkpoint/read.py", errors[0])
  _unraisable_from(_SUSPENDING, "/repo/llmimg_jax/elsewhere.py", errors[1])
  assert ours() == []  # both dropped
  _unraisable_from(_SUSPENDING, "/repo/llmimg_jax/elsewhere.py", errors[2])
  _unraisable_from(_SUSPENDING, "/site-packages/orbax_like/read.py", errors[3])
  assert ours() == ["our own bug", "loop busy"]


def _config_file(tmp_path):
  config_file = tmp_path / "config.py"
  config_file.write_text("import ml_collections\n\n\ndef get_config():\n  return "
                         "ml_collections.ConfigDict({'train': {'steps': 1, 'batch_size': 2}, "
                         "'data': {'folder': ''}})\n")
  return config_file


def _parse_error(monkeypatch, capsys, *args: str) -> str:
  """cli.flags_parser's one-line error for train.py's flags (--config and --workdir, both
  required) given --workdir and `args` (it exits with 2)."""
  from absl import flags
  from ml_collections import config_flags
  argv = ["train.py", "--workdir=/tmp/run", *args]
  # ml_collections executes each config file in the module 'config_config', kept in sys.modules:
  # a file without get_config would have the previous test's.
  monkeypatch.delitem(sys.modules, "config_config", raising=False)
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=flag_values, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)
  monkeypatch.setattr(cli.flags, "FLAGS", flag_values)
  with pytest.raises(SystemExit) as exited:
    cli.flags_parser("train.py")(argv)
  assert exited.value.code == 2
  return capsys.readouterr().err


@pytest.mark.parametrize("typo", ["--config.train.step=5", "--config.tran.steps=5",
                                  "--config.train.steps.x=5", "--config.data.folder.x=5"])
def test_an_unknown_override_key_names_that_override_alone(monkeypatch, capsys, tmp_path, typo):
  # It named every --config.* override of the command line, as if all of them were wrong.
  err = _parse_error(monkeypatch, capsys, f"--config={_config_file(tmp_path)}",
                     "--config.train.steps=3", "--config.data.folder=/data", typo,
                     "--config.train.batch_size=4")
  assert err.startswith("train.py: error: unknown config key "), err
  assert re.search(rf" in {re.escape(typo)}( \(did you mean \"\w+\"\?\))?\. A --config\.KEY=VALUE "
                   "override must name an existing key", err), err
  assert ('(did you mean "steps"?)' in err) == (typo == "--config.train.step=5"), err


def test_a_missing_config_file_is_named_without_ml_collections_internals(monkeypatch, capsys,
                                                                          tmp_path):
  # It was ml_collections' message: "Configuration is not available because of an earlier
  # failure to load: Failed loading config file config_config Attempted [Relative path]: ...".
  missing = tmp_path / "nope.py"
  err = _parse_error(monkeypatch, capsys, f"--config={missing}")
  assert err == (f"train.py: error: could not load the --config file: No such file or directory: "
                 f"{str(missing)!r}; name an existing config file, e.g. --config "
                 "configs/shapes_quick.py (the configs are in the repository's configs/, a "
                 "relative path is from the current directory).\n"), err


def test_a_config_left_out_is_named_as_required(monkeypatch, capsys):
  # absl's error for the required --config left out is the one for a get_config() that returned
  # None, and the parser read it as that: "... its get_config() returned None".
  assert _parse_error(monkeypatch, capsys) == (
      "train.py: error: --config is required: name a config file, e.g. --config "
      "configs/shapes_quick.py (the configs are in the repository's configs/).\n")


@pytest.mark.parametrize("form", ["-config=", "flagfile"])
def test_a_config_given_otherwise_than_as_config_is_not_named_as_left_out(form, monkeypatch,
                                                                         capsys, tmp_path):
  # absl also takes -config=FILE and a --flagfile holding --config=FILE; a file among them whose
  # get_config() returned None was named "--config is required" (the command line has no
  # --config), not as the file's missing return.
  config = tmp_path / "none_config.py"
  config.write_text("def get_config():\n  return None\n")
  (flagfile := tmp_path / "flags.txt").write_text(f"--config={config}\n")
  given = f"-config={config}" if form == "-config=" else f"--flagfile={flagfile}"
  assert _parse_error(monkeypatch, capsys, given) == (
      f"train.py: error: the --config file {config}: its get_config() returned None (a missing "
      "return?).\n")


_BROKEN_CONFIGS = {  # a config file's text, and the error for it after "train.py: error: "
    "missing": (None, "could not load the --config file: No such file or directory: {path!r}; "
                "name an existing config file, e.g. --config configs/shapes_quick.py (the "
                "configs are in the repository's configs/, a relative path is from the current "
                "directory)."),
    "raising": ("def get_config():\n  x = 1\n  raise NameError('no preset')\n",
                "the --config file failed to load: NameError: no preset (at {path}:3)"),
    "mistyped": ("def get_config():\n  raise ValueError('bad size')\n",  # a flags.Error
                 "the --config file failed to load: ValueError: bad size (at {path}:2)"),
    "syntax": ("def get_config(\n",
               "the --config file failed to load: SyntaxError: '(' was never closed (at "
               "{path}:1)"),
    "no_get_config": ("X = 1\n",  # a traceback (AttributeError in ml_collections)
                      "the --config file {path} defines no get_config(): define one that "
                      "returns the config (e.g. configs/shapes_quick.py's).")}


@pytest.mark.parametrize("spelling", ["--config=FILE", "--config FILE", "-config=FILE",
                                      "-config FILE", "--flagfile"])
@pytest.mark.parametrize("broken", sorted(_BROKEN_CONFIGS))
def test_a_broken_config_file_is_named_however_absl_was_given_it(spelling, broken, monkeypatch,
                                                                 capsys, tmp_path):
  # The path was read from the command line's --config alone: with -config=FILE or a --flagfile
  # the errors lost it ("Configuration is not available because of an earlier failure to load:
  # ...", or a traceback for an exception in the file).
  text, error = _BROKEN_CONFIGS[broken]
  config = tmp_path / f"{broken}_config.py"
  if text is not None:
    config.write_text(text)
  (flagfile := tmp_path / "flags.txt").write_text(f"--config={config}\n")
  given = {"--config=FILE": [f"--config={config}"], "--config FILE": ["--config", str(config)],
           "-config=FILE": [f"-config={config}"], "-config FILE": ["-config", str(config)],
           "--flagfile": [f"--flagfile={flagfile}"]}[spelling]
  assert _parse_error(monkeypatch, capsys, *given) == (
      f"train.py: error: {error.format(path=str(config))}\n")


def test_a_config_file_without_get_config_is_not_named_as_an_unknown_key(monkeypatch, capsys,
                                                                          tmp_path):
  # With an override, ml_collections' AttributeError was read as the override's: "unknown config
  # key module 'config_config' has no attribute 'get_config' in --config.train.steps=2".
  (config := tmp_path / "no_get_config.py").write_text("X = 1\n")
  assert _parse_error(monkeypatch, capsys, f"--config={config}", "--config.train.steps=2") == (
      f"train.py: error: the --config file {config} defines no get_config(): define one that "
      "returns the config (e.g. configs/shapes_quick.py's).\n")


@pytest.mark.parametrize("folder", ["my:configs", "a_file:x"])
def test_a_config_file_with_a_colon_in_its_path_is_named_with_the_fix(folder, monkeypatch,
                                                                       capsys, tmp_path):
  # FILE:ARGS split it: "No such file or directory: '.../my'", or "Is a directory" for a folder
  # named as the part before the ':'.
  (tmp_path / "a_file").mkdir()
  (config := tmp_path / folder / "c.py").parent.mkdir()
  config.write_text("def get_config():\n  return None\n")
  assert _parse_error(monkeypatch, capsys, f"--config={config}") == (
      f"train.py: error: the --config file {str(config)!r} has a ':' in its path, where "
      "FILE:ARGS begins the config's arguments: move or link it to a path without ':'.\n")


@pytest.mark.parametrize("given", ["--config=", "--config= ", "-config=", "--config=:arg"])
def test_a_blank_config_is_named_as_blank(given, monkeypatch, capsys):
  # It was ml_collections' "could not load the --config file: Configuration is not available
  # because of an earlier failure to load: Path to config file is an empty string."
  assert _parse_error(monkeypatch, capsys, given) == (
      "train.py: error: --config is blank (e.g. --config=$CONFIG with CONFIG unset); name a "
      "config file, e.g. --config configs/shapes_quick.py.\n")


@pytest.mark.parametrize("script, args, error", [
    ("train.py", ["--config", "configs/shapes_quick.py"],
     "--workdir is required: name the folder for the run's checkpoints, samples and logs, e.g. "
     "--workdir runs/shapes_quick (a run already there resumes)."),
    ("sample.py", ["--out", "samples"],
     "--workdir is required: name the train.py run to sample from (its --workdir), e.g. "
     "--workdir runs/shapes_quick.")])
def test_each_required_flag_left_out_is_one_sentence_naming_the_fix(script, args, error,
                                                                      tmp_path):
  # The line quoted the flag's help as written: "--workdir is required: where checkpoints,
  # samples and logs go." (train.py). sample.py's --out line is checked with its other flag
  # errors (tests/sample/test_cli.py), evaluate.py's --workdir in tests/eval/test_evaluate_cli.py.
  proc = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert (proc.returncode, proc.stderr) == (2, f"{script}: error: {error}\n"), proc.stderr[-2000:]


@pytest.mark.parametrize("override, error", [
    # The value in effect: the file's 1 after the earlier --config.train.steps=3.
    ("--config.train.steps=1e3", "not a whole number; the config has --config.train.steps=3."),
    ("--config.train.lr=fast", "not a number; the config has --config.train.lr=0.0001."),
    ("--config.train.keep=all", "not a whole number."),  # a placeholder(int): None
])
def test_a_value_of_the_wrong_type_names_the_config_value(override, error, monkeypatch, capsys,
                                                          tmp_path):
  # It was absl's "flag --config.train.steps=1e3: invalid literal for int() with base 10: '1e3'".
  config_file = tmp_path / "config.py"
  config_file.write_text("from ml_collections import config_dict\n\n\ndef get_config():\n  "
                         "return config_dict.ConfigDict({'train': {'steps': 1, 'lr': 1e-4, "
                         "'keep': config_dict.placeholder(int)}})\n")
  err = _parse_error(monkeypatch, capsys, f"--config={config_file}", "--config.train.steps=3",
                     override)
  assert err == f"train.py: error: {override}: {error}\n", err


@pytest.mark.parametrize("spelling", ["-config.train.step=5", "--flagfile",
                                      "--noconfig.train.step"])
def test_an_unknown_override_key_is_named_however_absl_was_given_it(spelling, monkeypatch, capsys,
                                                                    tmp_path):
  # Only a --config.KEY=VALUE on the command line was looked for: given with one dash, as a
  # --noKEY or in a --flagfile, an unknown key was ml_collections' AttributeError traceback.
  (flagfile := tmp_path / "flags.txt").write_text("--config.train.step=5\n")
  given = f"--flagfile={flagfile}" if spelling == "--flagfile" else spelling
  named = "--config.train.step=5" if spelling == "--flagfile" else spelling
  err = _parse_error(monkeypatch, capsys, f"--config={_config_file(tmp_path)}",
                     "--config.train.steps=3", given)
  assert err == (f"train.py: error: unknown config key 'step' in {named} (did you mean "
                 "\"steps\"?). A --config.KEY=VALUE override must name an existing key (see "
                 "base_config in llmimg_jax/train/config.py).\n"), err


@pytest.mark.parametrize("prog, args", [
    ("train.py", [str(ROOT / "train.py"), f"--config={ROOT}/configs/shapes_quick.py",
                  "--workdir=/nonexistent/w"]),
    ("sample.py", [str(ROOT / "sample.py"), "--workdir=/nonexistent/w", "--prompt=a", "--out=s"]),
    ("evaluate.py", [str(ROOT / "evaluate.py"), "--workdir=/nonexistent/w"]),
    ("python -m llmimg_jax.text", ["-m", "llmimg_jax.text", "--text=hello"]),
    ("prepare.py", ["-m", "llmimg_jax.data.prepare", "--dataset=captioned_shapes/tiny_32"]),
])
def test_a_deleted_current_directory_is_one_line(prog, args, tmp_path):
  """train.py blamed config.text.checkpoint (transformers' import failed); the text CLI printed
  a bare '[Errno 2] No such file or directory'."""
  gone = tmp_path / "gone"
  gone.mkdir()
  proc = subprocess.run(["bash", "-c", 'cd "$0" && rmdir "$0" && exec "$@"', gone,
                         sys.executable, *args], env=env(), capture_output=True, text=True,
                        timeout=120)
  assert (proc.returncode, proc.stderr) == (2, (
      f"{prog}: error: the current directory cannot be read (No such file or directory; "
      "deleted?): cd to an existing one and rerun the command.\n")), proc.stderr[-3000:]
