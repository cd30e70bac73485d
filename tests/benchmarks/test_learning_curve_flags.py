"""benchmarks/learning_curve.py reads every --variant's config before any data or training."""
import sys
from pathlib import Path

import pytest

from benchmarks import learning_curve

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "shapes_quick.py")


class _Ran(Exception):
  pass


def _ran(*args, **kwargs):  # stands in for loading the data (then training evaluator and runs)
  raise _Ran


@pytest.mark.parametrize("variant,message", [
    ("lazy:loss.gp_every", "'loss.gp_every' is not key=value"),  # was 'not enough values'
    ("lazy:no_such_group.gp_every=4", "no_such_group"),
    ("lazy:loss.gp_evry=4", f"'loss.gp_evry' is not a field of {CONFIG}"),
    ("lazy:train.batch_size=big", "batch_size"),
    # was accepted and ignored: every variant trains on --config's data
    ("flip:data.random_flip=True", "'data.random_flip': every variant trains on --config's data"),
    ("short:train.steps=2000", "'train.steps' is a setting of train.py's loop"),  # ran --steps
    ("stop:train.max_bad_steps=5", "'train.max_bad_steps' is a setting of train.py's loop"),
    ("eval:eval.every=100", "'eval.every' is a setting of train.py's loop")])
def test_a_bad_variant_is_refused_before_the_first_one_runs(monkeypatch, capsys, variant, message):
  """A typo in the second --variant stopped the script with a traceback only once the first
  variant's steps (hours at the defaults) had run."""
  monkeypatch.setattr(learning_curve, "load_split", _ran)
  monkeypatch.setattr(sys, "argv", ["learning_curve.py", "--config", CONFIG, "--variant", "base",
                                    "--variant", variant])
  with pytest.raises(SystemExit) as e:
    learning_curve.main()
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert f"--variant {variant!r}: " in err and message in err, err


def test_overrides_set_the_config_and_a_misspelt_field_is_not_added():
  """ConfigDict added loss.gp_evry=4 as a new field: the variant ran the base config's gp_every."""
  config = learning_curve.load_config(CONFIG, "loss.gp_every=4,loss.gp=none")
  assert (config.loss.gp_every, config.loss.gp) == (4, "none")
  with pytest.raises(ValueError, match="'loss.gp_evry' is not a field"):
    learning_curve.load_config(CONFIG, "loss.gp_evry=4")


@pytest.mark.parametrize("flag,value,message", [
    ("--steps", "0", "--steps 0: give 1 or more"),  # trained the evaluator, then no row at all
    ("--every", "0", "--every 0: give 1 or more")])  # ZeroDivisionError at the first step
def test_a_count_below_one_is_refused_before_the_data_loads(monkeypatch, capsys, flag, value,
                                                            message):
  monkeypatch.setattr(learning_curve, "load_split", _ran)
  monkeypatch.setattr(sys, "argv", ["learning_curve.py", "--config", CONFIG, flag, value])
  with pytest.raises(SystemExit) as e:
    learning_curve.main()
  assert e.value.code == 2
  assert f"learning_curve.py: error: {message}" in capsys.readouterr().err
