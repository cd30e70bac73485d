"""Shared fixtures: tiny datasets built once per test session into a temporary data_dir."""
from __future__ import annotations

import pytest

from llmimg_jax.data import pipeline


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("tfds_data"))


@pytest.fixture(scope="session")
def shapes_cfg(data_dir):
  """captioned_shapes/tiny_32 (256 train, 64 test, 64 holdout), built on first use."""
  cfg = pipeline.default_data_config()
  cfg.data_dir = data_dir
  cfg.config = "tiny_32"
  cfg.image_size = 32
  cfg.build_num_proc = 1
  pipeline.load_source(cfg, "train")  # builds
  return cfg


@pytest.fixture(scope="session")
def tokenizer():
  from llmimg_jax.text.tokenizer import load_tokenizer
  return load_tokenizer(None, max_length=64)
