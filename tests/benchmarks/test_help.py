"""`python benchmarks/X.py --help` prints usage and exits 0 for every benchmark script, without
running the benchmark (a script without a flag parser ignored --help and ran in full)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")
                 if 'if __name__ == "__main__":' in p.read_text())

# One interpreter for all scripts (each would import JAX again): runpy runs each as __main__.
_RUN_ALL = """
import contextlib, io, json, runpy, sys
results = {}
for name in sys.argv[1:]:
  out = io.StringIO()
  sys.argv = [f"benchmarks/{name}", "--help"]
  code = "ran without exiting"
  with contextlib.redirect_stdout(out):
    try:
      runpy.run_path(f"benchmarks/{name}", run_name="__main__")
    except SystemExit as e:
      code = e.code or 0
  results[name] = [code, out.getvalue()]
print(json.dumps(results))
"""


def test_every_benchmark_script_answers_help_with_its_usage():
  assert {"run.py", "strided_conv.py", "upsample_conv.py", "winograd_conv.py"} <= set(SCRIPTS)
  result = subprocess.run([sys.executable, "-c", _RUN_ALL, *SCRIPTS], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  import json
  results = json.loads(result.stdout.splitlines()[-1])
  bad = {name: code for name, (code, usage) in results.items()
         if code != 0 or not usage.startswith("usage:")}
  assert not bad, bad


def test_data_benchmarks_help_shows_their_example_command_on_its_own_line():
  """The README's "Measured here" commands: argparse's default formatter ran the docstring's
  example into the paragraphs around it ("... holdout). python benchmarks/data_build.py ...")."""
  for name, command in [
      ("data_build.py", "  python benchmarks/data_build.py --config 64 --data_dir /tmp/bench_tfds "
                        "[--num_proc 2]\n"),
      ("data_loader.py", "  python benchmarks/data_loader.py --data_dir DIR --config 64 "
                         "--workers 2 --batch 64\n")]:
    result = subprocess.run([sys.executable, f"benchmarks/{name}", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"\n\n{command}\n" in result.stdout, result.stdout
