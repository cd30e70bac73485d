"""Which checkpoints stay (the latest config.train.keep_checkpoints and the best evaluated step),
and a save that fails."""
import json
import re

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from llmimg_jax.eval import in_training
from llmimg_jax.train import checkpoint, loop
from llmimg_jax.train.workdir import CheckpointSaveError
from tests.train.utils import tiny_config


def _scripted_evaluation(monkeypatch, scores: dict[int, float]) -> None:
  """The loop's side of in_training.TrainingEvaluator, scoring each step as `scores` says."""
  class ScriptedEvaluator:
    def __init__(self, models, tokenizer, config, workdir, mesh=None):
      self.best_step, self.best_file = None, workdir / checkpoint.BEST_FILE

    def __call__(self, state, step, writer):
      if self.best_step is None or scores[step] > scores[self.best_step]:
        self.best_step = step
        self.best_file.write_text(json.dumps({"step": step}))

  monkeypatch.setattr(in_training, "TrainingEvaluator", ScriptedEvaluator)


def _small_config(data_dir):
  config = tiny_config(data_dir)
  # What is under test is the loop's saves: a smaller model (half the compile time).
  config.update_from_flattened_dict({"loss.gp": "none", "loss.diffaugment": "",
                                     "model.attn_resolutions": (), "loss.contrastive_weight": 0.0})
  return config


def test_the_best_evaluated_step_is_saved_and_kept(shapes_data_dir, tmp_path, monkeypatch):
  """eval.every=2 with ckpt_every=4 and keep_checkpoints=1: the best step (2) was no checkpoint
  step, so the loop saves it, and it stays beside the latest checkpoint (6)."""
  _scripted_evaluation(monkeypatch, {2: 0.9, 4: 0.5, 6: 0.1})
  config = _small_config(shapes_data_dir)
  config.train.update(steps=6, ckpt_every=4, keep_checkpoints=1)
  config.eval.every = 2
  tmp_path.mkdir(exist_ok=True)  # an older run's best.json: none of its checkpoints is here
  (tmp_path / checkpoint.BEST_FILE).write_text(json.dumps({"step": 9}))
  final = jax.device_get(loop.train(config, tmp_path))
  assert json.loads((tmp_path / "best.json.stale").read_text()) == {"step": 9}
  manager = checkpoint.make_manager(tmp_path, config)
  assert manager.all_steps() == [2, 6]
  best = checkpoint.restore(manager, 2, checkpoint.abstract_like(final))
  assert int(best.step) == 2 and not np.array_equal(best.g_params["to_rgb"]["kernel"],
                                                    final.g_params["to_rgb"]["kernel"])


def test_a_best_replaced_at_a_saved_step_is_deleted_at_once(shapes_data_dir, tmp_path,
                                                             monkeypatch):
  """Orbax applies keep_checkpoints when it saves, and the loop saves a step before evaluating
  it: the best it replaced (4, neither latest nor best) stayed until the next save, for good at the
  end of a run."""
  _scripted_evaluation(monkeypatch, {2: 0.1, 4: 0.5, 6: 0.9})
  config = _small_config(shapes_data_dir)
  config.train.update(steps=6, ckpt_every=2, keep_checkpoints=1)
  config.eval.every = 2
  loop.train(config, tmp_path)
  assert checkpoint.make_manager(tmp_path, config).all_steps() == [6]
  assert json.loads((tmp_path / checkpoint.BEST_FILE).read_text()) == {"step": 6}


def test_an_unreadable_best_json_is_replaced_not_fatal(tmp_path, caplog):
  evaluator = in_training.TrainingEvaluator.__new__(in_training.TrainingEvaluator)
  evaluator.best_path = tmp_path / checkpoint.BEST_FILE
  evaluator.setup = {"num_samples": 8}
  assert evaluator._read_best() is None  # none yet
  evaluator.best_path.write_text('{"step": 4, "caption_acc')  # cut short by a crash
  with caplog.at_level("WARNING"):
    assert evaluator._read_best() is None
  assert "the next evaluation replaces it" in caplog.text
  evaluator.best_path.write_text(json.dumps({"step": 4, "caption_accuracy": 0.5,
                                             "fid_indomain": 3.0}))
  assert evaluator._read_best()["step"] == 4


@pytest.mark.parametrize("text", ['{"step": 4, "caption_acc', '{"step": -3}', '{"step": 1e400}',
                                  '{"step": Infinity}', '{"step": "4"}', '[4]'])
def test_a_resume_refuses_a_best_json_it_cannot_read(tmp_path, text):
  """Its step's checkpoint, which it keeps, was deleted at the next save: without a word with
  evaluation off, under 'the next evaluation replaces it' with it on. 1e400 was an OverflowError
  traceback."""
  from llmimg_jax.train import resume
  (tmp_path / checkpoint.BEST_FILE).write_text(text)
  with pytest.raises(resume.BestFileError) as error:
    resume.check_best_file(tmp_path)  # as train() does before it restores
  assert str(error.value).startswith(f"{tmp_path / checkpoint.BEST_FILE} cannot be read (")
  assert str(error.value).endswith("or delete it to let that checkpoint go; then rerun the same "
                                   "command.")
  assert isinstance(error.value, checkpoint.CorruptCheckpointError)  # train.py: one line, 3


def test_train_refuses_an_unreadable_best_json_before_it_restores(tmp_path, monkeypatch):
  from llmimg_jax.train import resume
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / checkpoint.BEST_FILE).write_text('{"step": 4, "caption_acc')
  monkeypatch.setattr(loop, "make_iterator", lambda *args, **kwargs: None)
  monkeypatch.setattr(loop, "close_iterator", lambda data_iter: None)
  monkeypatch.setattr(loop, "_restore_or_init", lambda *args: pytest.fail("restored first"))
  with pytest.raises(resume.BestFileError, match="best.json cannot be read"):
    loop.train(tiny_config(tmp_path / "unused_data"), tmp_path / "run")


def test_a_best_whose_checkpoint_is_gone_is_set_aside(tmp_path, caplog):
  """A best.json (or earlier_best_*.json) of a step whose checkpoint was deleted by hand stayed:
  no later evaluation that scored below it was kept, and the log said that missing checkpoint
  'is kept'."""
  best = {"step": 2, "caption_accuracy": 0.9, "evaluated": 8}
  (tmp_path / checkpoint.BEST_FILE).write_text(json.dumps(best))
  (tmp_path / "earlier_best_6.json").write_text(json.dumps({"step": 6}))
  with caplog.at_level("WARNING"):
    in_training.set_aside_best_past(tmp_path, 8, [4, 8])
  assert not (tmp_path / checkpoint.BEST_FILE).exists()
  assert json.loads((tmp_path / "best.json.stale").read_text()) == best
  assert (tmp_path / "earlier_best_6.json.stale").exists()
  assert (f"best.json names step 2, whose checkpoint is not in {tmp_path / 'checkpoints'}; "
          "moved to best.json.stale.") in caplog.text
  assert "earlier_best_6.json names step 6, whose checkpoint is not in" in caplog.text


def test_best_json_scores_are_compared_as_numbers(tmp_path):
  """A score written as a string passed the check and failed every later evaluation (TypeError:
  bad operand type for unary -: 'str'); an "evaluated" of Infinity was an OverflowError."""
  evaluator = in_training.TrainingEvaluator.__new__(in_training.TrainingEvaluator)
  evaluator.best_path = tmp_path / checkpoint.BEST_FILE
  evaluator.setup = {}
  evaluator.best_path.write_text(json.dumps({"step": 4, "caption_accuracy": "0.5",
                                             "fid_indomain": "3", "evaluated": float("inf")}))
  best = evaluator._read_best()
  assert (best["caption_accuracy"], best["fid_indomain"]) == (0.5, 3.0)
  assert not in_training.evaluated(tmp_path, 4)  # made again


def test_every_evaluation_is_recorded_in_best_json(tmp_path, monkeypatch):
  """best.json was written only for a new best, so a rerun could not tell an evaluation a kill
  cut short from one that did not improve: it now names the last step evaluated."""
  from llmimg_jax.eval import fid
  features = np.random.default_rng(0).normal(size=(8, 4))

  class Scores:
    def __init__(self):
      self.accuracy = iter([0.5, 0.4])

    def score(self, images, captions):
      return {"caption_accuracy": next(self.accuracy), "num_images": len(captions)}

    def features(self, images):
      return features
  evaluator = in_training.TrainingEvaluator.__new__(in_training.TrainingEvaluator)
  evaluator.__dict__.update(
      models=None, tokenizer=None, mesh=None, captions=["a red circle"] * 8, seed=2,
      evaluator=Scores(), reference=fid.statistics(features), floor=1.0,
      setup={"num_samples": 8}, best=None, best_path=tmp_path / checkpoint.BEST_FILE)
  monkeypatch.setattr(in_training, "generate_for_captions", lambda *a, **k: None)
  state = type("State", (), {"ema_params": None, "text_params": None})
  assert not in_training.evaluated(tmp_path, 2)
  evaluator(state, 2, None)
  assert in_training.evaluated(tmp_path, 2) and not in_training.evaluated(tmp_path, 4)
  evaluator(state, 4, None)  # no better: step 2 stays the best, step 4 is recorded as evaluated
  best = json.loads(evaluator.best_path.read_text())
  assert best["step"] == 2 and best["evaluated"] == 4 and in_training.evaluated(tmp_path, 4)
  # An older version's, without "evaluated": counted as evaluated, as those versions did.
  evaluator.best_path.write_text(json.dumps({"step": 2}))
  assert in_training.evaluated(tmp_path, 4) and in_training.evaluated(tmp_path, 6)
  evaluator.best_path.write_text('{"step": 4, "evalu')  # cut short: made again
  assert not in_training.evaluated(tmp_path, 4)


def test_brief_error_is_one_line_with_the_innermost_cause():
  spec = '{"driver": "zarr", "kvstore": {"path": "/ckpt/1/state/"}}'
  try:
    try:
      try:
        raise ValueError(f'OUT_OF_RANGE: Error reading "a/0" in OCDBT database: Requested byte '
                         f"range [0, 2291) is not valid for value of size 1268 "
                         f"[tensorstore_spec='{spec}']")
      except ValueError as inner:
        raise RuntimeError("read failed") from inner
    except RuntimeError as middle:  # as Orbax raises it: the spec pretty-printed over lines
      raise Exception("Encountered error while reading array index: (slice(0, 1000, 1),). See full "
                      "TensorStore details: <bound method spec of TensorStore({\n  'base': {\n"
                      "    'driver': 'zarr',\n  },\n})>.") from middle
  except Exception as e:  # pylint: disable=broad-exception-caught
    brief = checkpoint.brief_error(e)
  assert brief == ("Exception: Encountered error while reading array index: (slice(0, 1000, 1),)."
                   " (cause: ValueError: OUT_OF_RANGE: Error reading \"a/0\" in OCDBT database: "
                   "Requested byte range [0, 2291) is not valid for value of size 1268)")
  assert checkpoint.brief_error(OSError("x " * 400), limit=20) == "OSError: x x x x x x..."


def test_a_checkpoint_that_cannot_be_written_stops_the_run_naming_the_newest(
    shapes_data_dir, tmp_path, monkeypatch):
  """A full disk surfaced as TensorStore's ValueError under hundreds of lines of traceback, at the
  save after the one that failed (Orbax saves asynchronously)."""
  config = _small_config(shapes_data_dir)
  config.train.steps, config.train.ckpt_every, config.train.log_every = 4, 1, 1
  save, calls = ocp.CheckpointManager.save, []

  def full_disk(manager, step, *args, **kwargs):
    calls.append(step)
    if step == 1:
      return save(manager, step, *args, **kwargs)
    manager.wait_until_finished()
    raise ValueError('RESOURCE_EXHAUSTED: Error writing "bad_steps/.zarray": [OS error: No space '
                     'left on device]')

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
  with pytest.raises(CheckpointSaveError, match=(
      rf"^A checkpoint could not be written to {re.escape(str(tmp_path / 'checkpoints'))} \("
      r"ValueError: RESOURCE_EXHAUSTED: .*No space left on device\]\)\. The newest complete "
      r"checkpoint there is step 1, .* rerun the same command to resume\.$")):
    loop.train(config, tmp_path)
  assert calls == [1, 2]
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]


def test_a_best_of_an_earlier_evaluation_keeps_its_checkpoint_until_its_file_goes(tmp_path):
  """A resume with another evaluation (e.g. the evaluator's cache retrained) moves best.json to
  earlier_best_STEP.json: as best.json's step was, that checkpoint is kept beside the latest."""
  import ml_collections
  config = ml_collections.ConfigDict({"train": {"keep_checkpoints": 1}})
  (tmp_path / "earlier_best_1.json").write_text(json.dumps({"step": 1}))
  (tmp_path / "earlier_best_x.json").write_text("{}")  # not a step: keeps nothing
  with checkpoint.make_manager(tmp_path, config) as manager:
    for step in range(4):
      checkpoint.save(manager, step, {"w": np.full(2, step)}, None, config)
      manager.wait_until_finished()
    assert manager.all_steps() == [1, 3]
    # Evaluated again after a resume, it became best.json's, then a former best: kept still.
    checkpoint.drop_former_best(manager, 1, config.train.keep_checkpoints)
    assert manager.all_steps() == [1, 3]
    (tmp_path / "earlier_best_1.json").unlink()
    checkpoint.save(manager, 4, {"w": np.full(2, 4)}, None, config)
    manager.wait_until_finished()
    assert manager.all_steps() == [4]
