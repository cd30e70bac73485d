"""benchmarks/run.py refuses timing flags it cannot honour before any model is built."""
import sys

import pytest

from benchmarks import run


@pytest.mark.parametrize("args,message", [
    # median of no calls: statistics.StatisticsError after the peak matmul and the first compile
    (["--iters", "0"], "--iters 0: give 1 or more"),
    (["--quick", "--iters=-2"], "--iters -2: give 1 or more"),
    # no warm-up at all without a word: the first timed call compiled
    (["--warmup", "-1"], "--warmup -1: give 0 or more")])
def test_a_count_below_its_least_is_a_usage_error_naming_the_flag(monkeypatch, capsys, args,
                                                                  message):
  monkeypatch.setattr(sys, "argv", ["benchmarks/run.py", *args])
  with pytest.raises(SystemExit) as e:
    run._parse()  # pylint: disable=protected-access
  assert e.value.code == 2
  assert f"run.py: error: {message}" in capsys.readouterr().err


def test_the_least_counts_are_accepted(monkeypatch):
  monkeypatch.setattr(sys, "argv", ["benchmarks/run.py", "--iters", "1", "--warmup", "0"])
  assert (run._parse().iters, run._parse().warmup) == (1, 0)  # pylint: disable=protected-access
