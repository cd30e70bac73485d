"""generate_for_captions: image i is the generator's output for caption i and noise i."""
import jax
import numpy as np

from llmimg_jax.eval.generate import generate_for_captions
from llmimg_jax.train.state import build_models, build_text
from tests.sample.utils import _quick_state, assert_uint8_of, generator_output
from tests.train.utils import tiny_config


def test_each_image_comes_from_its_caption_and_its_noise(tmp_path):
  config = tiny_config(tmp_path)
  tokenizer, t5_config, pretrained = build_text(config)
  models = build_models(config, t5_config)
  state = jax.device_get(_quick_state(models, pretrained))
  captions = ["a red circle", "a blue square on the left", "a green triangle"]
  # batch_size 2: the second batch wraps around to caption 0 and drops it.
  images = generate_for_captions(models, state.ema_params, state.text_params, tokenizer,
                                 captions, seed=3, batch_size=2)
  assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
  tokens = tokenizer(captions)
  for i in range(3):
    z = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(3), i), (1, config.model.z_dim))
    x = generator_output(models, state.ema_params, state.text_params, z,
                         tokens["input_ids"][i:i + 1], tokens["attention_mask"][i:i + 1])
    assert x.min() < -0.5 and x.max() > 0.5  # the [-1, 1] -> [0, 255] mapping is exercised
    assert_uint8_of(images[i], x)


def test_non_finite_generator_output_is_refused_when_checked(tmp_path):
  """evaluate.py scored NaN generator output (cast to flat uint8 colour) without a word."""
  import pytest
  config = tiny_config(tmp_path)
  tokenizer, t5_config, pretrained = build_text(config)
  models = build_models(config, t5_config)
  state = jax.device_get(_quick_state(models, pretrained))
  nan_params = jax.tree_util.tree_map(lambda x: x * np.nan, state.ema_params)
  captions = ["a red circle", "a green triangle"]
  images = generate_for_captions(models, nan_params, state.text_params, tokenizer, captions)
  assert images.shape == (2, 32, 32, 3)  # unchecked (training's evaluation): still images
  with pytest.raises(ValueError, match=r"2 of 2 generated images are not finite.*'a red circle'"
                     r".*earlier --step"):
    generate_for_captions(models, nan_params, state.text_params, tokenizer, captions,
                          check_finite=True)
