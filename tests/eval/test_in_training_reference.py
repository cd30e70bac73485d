"""The in-training evaluation's in-domain FID and its floor share one reference set (train
records), as evaluate.py's: a floor the generated images beat by design was no floor."""
import pytest

from tests.eval.utils import _to_evaluate


def test_generated_and_real_images_are_scored_against_the_same_train_records(
    sampler, tiny_eval, tmp_path):
  """The FID took the scored test records' own real images as reference, the floor train
  records: generated images conditioned on exactly the reference's captions came out below the
  floor (in-domain FID 97.3, floor 138.9 on shapes_quick with eval.num_samples=64)."""
  from llmimg_jax.eval import fid
  from llmimg_jax.eval.generate import generate_for_captions
  from llmimg_jax.eval.in_training import TrainingEvaluator
  from llmimg_jax.eval.shapes_eval import load_split
  data, _ = tiny_eval
  State, config = _to_evaluate(sampler, tiny_eval)
  evaluate = TrainingEvaluator(sampler.models, sampler.tokenizer, config, tmp_path)
  train, test = (load_split(data, split, 8).at_size(config.data.image_size)
                 for split in ("train", "test"))
  features, stats = evaluate.evaluator.features, fid.statistics
  reference = stats(features(train.images))
  images = generate_for_captions(sampler.models, sampler.ema_params, sampler.text_params,
                                 sampler.tokenizer, evaluate.captions, seed=evaluate.seed)
  result = evaluate(State, 2, None)
  assert result["fid_indomain"] == pytest.approx(
      fid.frechet_distance(*stats(features(images)), *reference), rel=1e-6)
  assert evaluate.floor == pytest.approx(
      fid.frechet_distance(*stats(features(test.images)), *reference), rel=1e-6)
