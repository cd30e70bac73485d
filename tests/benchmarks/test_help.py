"""`python benchmarks/X.py --help` prints usage and exits 0 for every benchmark script, without
running the benchmark (a script without a flag parser ignored --help and ran in full)."""
import functools
import json
import subprocess
import sys
from pathlib import Path

from configs import shapes_quick

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")
                 if 'if __name__ == "__main__":' in p.read_text())

# One interpreter for all calls (each would import JAX again): runpy runs each script as __main__.
_RUN_ALL = """
import contextlib, io, json, runpy, sys
results = []
for name, args in json.loads(sys.argv[1]):
  out, err = io.StringIO(), io.StringIO()
  sys.argv = [f"benchmarks/{name}", *args]
  code = "ran without exiting"
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      runpy.run_path(f"benchmarks/{name}", run_name="__main__")
    except SystemExit as e:
      code = e.code or 0
  results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


# Usage errors of a count below its least: were a ZeroDivisionError (profile_step.py --steps 0 after
# a minute of compiling, loop_data.py --block 0, data_loader.py --steps 0) or 'no median for empty
# data' (--rounds 0).
COUNTS = {("profile_step.py", "--steps", "0"): "argument --steps: 0: give 1 or more",
          ("eval_options.py", "--rounds", "0"): "argument --rounds: 0: give 1 or more",
          ("loop_data.py", "--block", "0"): "argument --block: 0: give 1 or more",
          ("data_loader.py", "--steps", "0"): "argument --steps: 0: give 1 or more",
          ("step_options.py", "--rounds", "0"): "argument --rounds: 0: give 1 or more",
          ("twin_ab.py", "--warmup", "-1"): "argument --warmup: -1: give 0 or more",
          ("onednn_conv.py", "--rounds", "0"): "argument --rounds: 0: give 1 or more",
          # Its docstring's data.KEY=VALUE form reads: the error names the second change only.
          ("loop_data.py", "--data", "data.read_buffer_size=0;buffer=1"):
              f"'buffer=1': expected KEY=VALUE with one of "
              f"{sorted(shapes_quick.get_config().data)} as KEY.",
          ("run.py", "--nf", "0"): "argument --nf: 0: give 1 or more",
          ("run.py", "--batch", "two"): "argument --batch: invalid whole_number value: 'two'"}

# Other values no run can use: were a traceback (ValueError, IndexError, FileNotFoundError, a
# TypeError), after its build or training for some; or a silent wrong result: two variants of one
# name were timed as one, or overwrote each other's samples.
BAD_VALUES = {
    ("data_loader.py", "--image_size", "0"): "argument --image_size: 0: give 1 or more",
    ("data_loader.py", "--max_length", "1"): "argument --max_length: 1: give 2 or more",
    ("data_loader.py", "--read_threads", "-2"): "argument --read_threads: -2: give 0 or more",
    ("data_loader.py", "--config", "65"): "--config 65: captioned_shapes has no config '65'; "
        "pick one of ['128', '32', '32_small', '64', '64_small', 'center_32', 'colors_32', "
        "'colors_64', 'single_32', 'tiny_32'].",
    ("data_loader.py", "--config", "tiny_32", "--image_size", "64"): "--image_size 64: "
        "captioned_shapes/tiny_32 stores 32px images; drop --image_size or pick a larger --config.",
    ("eval_options.py", "--resolution", "0"):
        "argument --resolution: invalid choice: 0 (choose from 32, 64, 128, 256)",
    ("twin_ab.py", "--bench", "0"): "argument --bench: invalid choice: 0 (choose from 32, 64, "
                                    "128, 256)",
    ("step_options.py", "--bench", "7"): "argument --bench: invalid choice: 7 (choose from 0, "
                                         "32, 64, 128, 256)",
    ("data_build.py", "--num_proc", "-3"): "argument --num_proc: -3: give 0 or more",
    ("data_build.py", "--config", "nosuch"): "--config nosuch: captioned_shapes has no config "
        "'nosuch'; pick one of ['128', '32', '32_small', '64', '64_small', 'center_32', "
        "'colors_32', 'colors_64', 'single_32', 'tiny_32'].",
    ("data_build.py", "--data_dir", "/proc/nope"): "--data_dir /proc/nope: No such file or "
                                                   "directory; pass a folder it can create.",
    ("loop_data.py", "--data", "read_buffer_size=big"):
        "'read_buffer_size=big': config.data.read_buffer_size must be of type int, like its "
        "default 0.",
    ("loop_data.py", "--baseline", "read_buffer_size=5", "--data", "read_buffer_size=5"):
        "the variant 'read_buffer_size=5' is given twice; give each once.",
    ("learning_curve.py", "--variant", "gp/4:loss.gp_every=4"):
        "--variant 'gp/4:loss.gp_every=4': give each variant its own name before the ':', "
        "without '/' and other than 'real' (the real images' row).",
    ("learning_curve.py", "--variant", "a:loss.gp_every=4", "--variant", "a:loss.gp_every=2"):
        "--variant 'a:loss.gp_every=2': give each variant its own name before the ':', without "
        "'/' and other than 'real' (the real images' row)."}


@functools.cache
def _ran() -> dict[tuple[str, ...], tuple[int | str, str, str]]:
  """(exit code, stdout, stderr) of `python benchmarks/NAME ARGS...`, keyed (NAME, *ARGS), for
  every script's --help and COUNTS: one interpreter for all, once per test process."""
  calls = [(name, "--help") for name in SCRIPTS] + list(COUNTS) + list(BAD_VALUES)
  result = subprocess.run([sys.executable, "-c", _RUN_ALL,
                           json.dumps([(name, list(args)) for name, *args in calls])],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return dict(zip(calls, json.loads(result.stdout.splitlines()[-1])))


def test_every_benchmark_script_answers_help_with_its_usage():
  assert {"run.py", "strided_conv.py", "upsample_conv.py", "winograd_conv.py"} <= set(SCRIPTS)
  bad = {name: code for name in SCRIPTS
         if (code := _ran()[name, "--help"][0]) != 0
         or not _ran()[name, "--help"][1].startswith("usage:")}
  assert not bad, bad


def test_a_count_below_its_least_is_a_usage_error_before_any_work():
  for (name, *args), message in COUNTS.items():
    code, _, err = _ran()[(name, *args)]
    assert (code, err.splitlines()[-1]) == (2, f"{name}: error: {message}")


def test_a_value_no_run_can_use_is_a_usage_error_before_any_work():
  for (name, *args), message in BAD_VALUES.items():
    code, _, err = _ran()[(name, *args)]
    assert (code, err.splitlines()[-1]) == (2, f"{name}: error: {message}")


def test_data_benchmarks_help_shows_their_example_command_on_its_own_line():
  """The README's "Measured here" commands: argparse's default formatter ran the docstring's
  example into the paragraphs around it ("... holdout). python benchmarks/data_build.py ...")."""
  for name, command in [
      ("data_build.py", "  python benchmarks/data_build.py --config 64 --data_dir /tmp/bench_tfds "
                        "[--num_proc 2]\n"),
      ("data_loader.py", "  python benchmarks/data_loader.py --data_dir DIR --config 64 "
                         "--workers 2 --batch 64\n")]:
    code, usage, err = _ran()[name, "--help"]
    assert code == 0, err[-3000:]
    assert f"\n\n{command}\n" in usage, usage
