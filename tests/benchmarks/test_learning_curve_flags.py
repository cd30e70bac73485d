"""benchmarks/learning_curve.py reads every --variant's config before any data or training."""
import json
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
    ("lazy:loss.gp_evry=4", "config.loss.gp_evry is not a config key (did you mean"),
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
  with pytest.raises(ValueError, match=r"config.loss.gp_evry is not a config key \(did you mean"):
    learning_curve.load_config(CONFIG, "loss.gp_evry=4")
  with pytest.raises(ValueError, match=r"config.seeds is not a config key"):
    learning_curve.load_config(CONFIG, "seeds=1")


@pytest.mark.parametrize("flag,value,message", [
    ("--steps", "0", "--steps 0: give 1 or more"),  # trained the evaluator, then no row at all
    ("--every", "0", "--every 0: give 1 or more"),  # ZeroDivisionError at the first step
    # np.stack of no records, once the dataset was built
    ("--num_train", "0", "--num_train 0: give 1 or more"),
    ("--num_test", "-1", "--num_test -1: give 1 or more"),
    ("--num_eval", "0", "--num_eval 0: give 1 or more"),
    ("--evaluator_steps", "0", "--evaluator_steps 0: give 1 or more"),  # an untrained evaluator
    # scored 100 captions a row, not the 500 asked
    ("--num_test", "100", "--num_eval 500 exceeds --num_test 100: the evaluations sample")])
def test_a_count_below_one_is_refused_before_the_data_loads(monkeypatch, capsys, flag, value,
                                                            message):
  """And a --num_eval that --num_test cannot give."""
  monkeypatch.setattr(learning_curve, "load_split", _ran)
  monkeypatch.setattr(sys, "argv", ["learning_curve.py", "--config", CONFIG, flag, value])
  with pytest.raises(SystemExit) as e:
    learning_curve.main()
  assert e.value.code == 2
  assert f"learning_curve.py: error: {message}" in capsys.readouterr().err


def test_a_rows_losses_are_means_over_the_steps_since_the_last_row(monkeypatch, tmp_path):
  """A row's d_loss was that of its one step: with loss.gp_every=4 and --every a multiple of 4,
  never a penalty step, so a lazy variant's d_loss left the penalty out and the base's (a
  penalty every step) held it. The stand-in step's d_loss is 5 at penalty steps, else 1."""
  import types

  import numpy as np
  config = learning_curve.load_config(CONFIG, "loss.gp_every=4,train.batch_size=2")

  def step_fn(state, batch):
    del batch
    penalty = state.step % 4 == 0
    return types.SimpleNamespace(step=state.step + 1, ema_params={}, text_params={}), {
        "d_loss": np.float32(5.0 if penalty else 1.0), "g_loss": np.float32(state.step),
        "finite": np.float32(1.0)}

  def tokenizer(captions):
    return {"input_ids": np.zeros((len(captions), 3), np.int32),
            "attention_mask": np.ones((len(captions), 3), np.int32)}

  start = types.SimpleNamespace(step=0, ema_params={}, text_params={})
  monkeypatch.setattr(learning_curve, "build_text", lambda config: (tokenizer, None, None))
  monkeypatch.setattr(learning_curve, "build_models", lambda config, t5: None)
  monkeypatch.setattr(learning_curve.loop, "create_state", lambda *a: start)
  monkeypatch.setattr(learning_curve.loop, "jit_train_step", lambda models, mesh: step_fn)
  monkeypatch.setattr(learning_curve, "generate_images",
                      lambda models, ema, text, z, ids, mask: np.zeros((2, 4, 4, 3), np.uint8))
  data = types.SimpleNamespace(images=np.zeros((2, 4, 4, 3), np.uint8), captions=[["a"], ["b"]])
  evaluator = types.SimpleNamespace(score=lambda images, captions: {"caption_accuracy": 0.5})
  with open(tmp_path / "curves.jsonl", "w") as out:
    learning_curve.run_variant(config, data, data, evaluator, 8, 4, 2, out, "lazy")
  rows = [json.loads(line) for line in (tmp_path / "curves.jsonl").read_text().splitlines()]
  assert [(r["step"], r["d_loss"], r["g_loss"]) for r in rows] == [(4, 2.0, 1.5), (8, 2.0, 5.5)]
