"""best.json across a resume: the best step's scores are only compared with scores of the same
evaluation (test captions, image size, dataset)."""
import json
import logging

from tests.sample.conftest import run  # noqa: F401  (run: session fixture)
from tests.train.utils import tiny_config


def test_a_best_scored_on_another_evaluation_is_replaced_not_compared(
    run, tiny_eval, tmp_path, caplog):  # noqa: F811
  """Resumed with another config.eval.num_samples, the run compared its scores with a best.json
  scored on other captions and kept (or beat) that step by a comparison that means nothing."""
  from llmimg_jax.eval.in_training import TrainingEvaluator
  from llmimg_jax.sample import Sampler
  data, _ = tiny_eval
  sampler = Sampler.from_workdir(run.workdir, batch_size=8)

  class State:
    ema_params, text_params = sampler.ema_params, sampler.text_params

  config = tiny_config(data.data_dir)
  config.eval.every, config.eval.num_samples = 2, 8
  TrainingEvaluator(sampler.models, sampler.tokenizer, config, tmp_path)(State, 2, None)
  assert json.loads((tmp_path / "best.json").read_text())["step"] == 2
  same = TrainingEvaluator(sampler.models, sampler.tokenizer, config, tmp_path)
  assert same.best_step == 2  # the same evaluation, resumed: still the best to beat
  config.eval.num_samples = 4
  with caplog.at_level(logging.WARNING):
    other = TrainingEvaluator(sampler.models, sampler.tokenizer, config, tmp_path)
  assert other.best_step is None
  assert "best.json" in caplog.text and "num_samples" in caplog.text
  other(State, 4, None)  # the first evaluation of this setup is the best so far
  assert json.loads((tmp_path / "best.json").read_text())["step"] == 4
