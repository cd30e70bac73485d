"""benchmarks/profile_step.py refuses flags its --generate mode would ignore, before any work."""
import sys
from pathlib import Path

import pytest

from benchmarks import profile_step

SCRIPT = str(Path(__file__).resolve().parents[2] / "benchmarks" / "profile_step.py")


class _Ran(Exception):
  pass


@pytest.mark.parametrize("flags", [["--max_length", "160"], ["--bench", "64"], ["--sampling"]])
def test_generate_refuses_the_step_flags_it_would_ignore(monkeypatch, capsys, flags):
  """--generate --max_length 160 profiled the 64-token T5 row and said nothing of the flag."""
  def ran(*args, **kwargs):
    raise _Ran
  monkeypatch.setattr(profile_step, "greedy_generation_args", ran)
  monkeypatch.setattr(profile_step, "models_and_batch", ran)
  monkeypatch.setattr(sys, "argv", [SCRIPT, "--no-reuse-host-memory", "--generate", *flags])
  with pytest.raises(SystemExit) as e:
    profile_step.main()
  assert e.value.code == 2
  assert f"{flags[0]} would be ignored: drop it or --generate." in capsys.readouterr().err
