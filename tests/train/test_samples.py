"""The loop's sample grid: generated data parallel over the training mesh, the same images as on
one device."""
import logging

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from llmimg_jax.train.mesh import make_mesh
from llmimg_jax.train.samples import SampleWriter, grid_name
from llmimg_jax.train.state import build_models, build_text
from tests.eval.test_generate import _setup, assert_same_images
from tests.train.utils import tiny_config


def test_the_grid_is_split_over_the_devices_and_the_same_as_on_one(tmp_path):
  """The grid's batch was unsharded: each of 8 devices generated every image."""
  config, tokenizer, models, state = _setup(tmp_path)
  config.train.sample_prompts = ("a red circle", "a blue square", "a green triangle")
  config.train.samples_per_prompt = 3  # 9 images: padded to 16 rows on 8 devices
  mesh = make_mesh()
  eight = SampleWriter(models, tokenizer, config, tmp_path / "eight", mesh)
  assert all(x.shape[0] == 16 and x.sharding.is_equivalent_to(NamedSharding(mesh, P("data")),
                                                              x.ndim) for x in eight.inputs)
  images = eight.images(state)
  one = SampleWriter(models, tokenizer, config, tmp_path / "one", make_mesh(jax.devices()[:1]))
  assert [x.shape[0] for x in one.inputs] == [9] * 3
  assert images.shape == (9, 32, 32, 3)
  assert_same_images(images, one.images(state))
  assert eight(state, 7, None) == tmp_path / "eight" / "samples" / grid_name(7)
  assert (tmp_path / "eight" / "samples" / grid_name(7)).is_file()


def test_a_sample_prompt_cut_to_max_length_names_the_run_s_settings(tmp_path, caplog):
  """The tokenizer's advice named load_tokenizer and TextGenerator.from_pretrained: a sample
  prompt is the config's, and so is the max_length it is cut to (the training captions' too)."""
  config = tiny_config(tmp_path)
  config.train.sample_prompts = ("a red circle", "a red circle left of a blue square")
  tokenizer, t5_config, _ = build_text(config)
  with caplog.at_level(logging.WARNING):
    SampleWriter(build_models(config, t5_config), tokenizer, config, tmp_path,
                 make_mesh(jax.devices()[:1]))
  assert [r.getMessage() for r in caplog.records] == [
      "Text #2 of 2 ('a red circle left of a blue sq...', 35 tokens) is cut to max_length=32 "
      "tokens: shorten such prompts in config.train.sample_prompts, or raise "
      "config.text.max_length (which the training captions are cut to as well) to keep them "
      "whole."]
