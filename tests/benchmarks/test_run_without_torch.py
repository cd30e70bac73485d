"""`python benchmarks/run.py --quick` without torch (a bench/test extra, not a runtime dependency,
so absent after the README's quick start) is one line naming torch and how to install it, not a
ModuleNotFoundError traceback."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# torch made unimportable in this interpreter only (the test venv has it installed).
_RUN = """
import runpy, sys
sys.modules["torch"] = None
sys.argv = ["benchmarks/run.py", "--quick"]
runpy.run_path("benchmarks/run.py", run_name="__main__")
"""


def test_run_without_torch_is_one_line_naming_the_install():
  result = subprocess.run([sys.executable, "-c", _RUN], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("benchmarks/run.py: error: it times our models against PyTorch twins "
                         "and needs torch"), last
  assert "pip install torch==2.13.0" in last, last
