"""The in-training evaluation compiles its programs once per run: later evaluations (of a new
state each time, as the loop passes) reuse them."""
import jax
import jax.numpy as jnp

from tests.eval.utils import _eval_config
from tests.train.utils import lowered_programs


def test_evaluations_after_the_first_compile_nothing(sampler, tiny_eval, tmp_path):
  from llmimg_jax.eval.in_training import TrainingEvaluator
  data, _ = tiny_eval
  config = _eval_config(data.data_dir)
  evaluate = TrainingEvaluator(sampler.models, sampler.tokenizer, config, tmp_path)

  class State:  # a step's state: new arrays of the same types and shardings
    def __init__(self):
      self.ema_params, self.text_params = jax.tree.map(
          jnp.copy, (sampler.ema_params, sampler.text_params))

  with lowered_programs() as lowered:
    evaluate(State(), 2, None)
    first = len(lowered)
    for step in (4, 6):
      evaluate(State(), step, None)
  assert lowered[first:] == [], lowered


def test_the_largest_config_seed_evaluates(sampler, tiny_eval, tmp_path):
  """The evaluation draws its noise from config.seed + 2, past 2**32 - 1 for the two largest
  seeds config.validate allows: it wraps, as jax.random.PRNGKey did before generate_for_captions
  checked its seed (which then refused it at the first evaluation, mid-run)."""
  from llmimg_jax.eval.in_training import TrainingEvaluator
  data, _ = tiny_eval
  config = _eval_config(data.data_dir)
  config.seed = 2**32 - 1
  evaluate = TrainingEvaluator(sampler.models, sampler.tokenizer, config, tmp_path)
  assert evaluate.setup["seed"] == 2**32 + 1  # what best.json records, as before
  assert 0 <= evaluate(sampler, 2, None)["caption_accuracy"] <= 1


def test_a_cut_caption_is_warned_of_once_per_run_not_every_evaluation(
    sampler, tiny_eval, tmp_path, caplog):
  """The evaluation's captions are the same at every step: their cut warning (tiny_32's two-shape
  captions are over config.text.max_length=32 tokens) comes with the first evaluation, not again
  every eval.every steps."""
  import logging
  from llmimg_jax.eval.in_training import TrainingEvaluator
  data, _ = tiny_eval
  config = _eval_config(data.data_dir)
  evaluate = TrainingEvaluator(sampler.models, sampler.tokenizer, config, tmp_path)
  with caplog.at_level(logging.WARNING, logger="llmimg_jax"):
    for step in (2, 4, 6):
      evaluate(sampler, step, None)
  cut = [r.getMessage() for r in caplog.records if "is cut to max_length" in r.getMessage()]
  assert len(cut) == 1 and "(6 of 8 texts are)" in cut[0], cut
