import ml_collections
import pytest

from llmimg_jax.train.config import base_config


def tiny_config(data_dir) -> ml_collections.ConfigDict:
  """A config small enough to compile and step in seconds on a CPU."""
  c = base_config()
  c.data.name = "captioned_shapes"
  c.data.config = "tiny_32"
  c.data.data_dir = str(data_dir)
  c.data.image_size = 32
  c.data.num_workers = 0
  c.text.max_length = 32
  c.text.d_model = 32
  c.text.d_ff = 64
  c.text.num_layers = 1
  c.text.num_heads = 2
  c.model.resolution = 32
  c.model.nf_g = 8
  c.model.nf_d = 8
  c.model.z_dim = 16
  c.model.cond_dim = 32
  c.loss.contrastive_weight = 0.1
  c.train.steps = 4
  c.train.batch_size = 8
  c.train.log_every = 2
  c.train.sample_every = 4
  c.train.ckpt_every = 2
  c.train.sample_prompts = ("a red circle", "a blue square")
  c.train.samples_per_prompt = 2
  return c


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
  """A tiny captioned_shapes build shared by the training tests (built on first use)."""
  return tmp_path_factory.mktemp("tfds")
