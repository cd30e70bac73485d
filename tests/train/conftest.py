"""Shared fixtures of the training tests: a tiny captioned_shapes data_dir, and checkpoints of
host-drawn states to resume from."""
import shutil

import jax
import numpy as np
import pytest

from llmimg_jax.train import checkpoint
from llmimg_jax.train.state import build_models, build_text
from tests.sample.utils import _quick_state
from tests.train.utils import _fresh, tiny_config


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
  """A tiny captioned_shapes build shared by the training tests (built on first use)."""
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="session")
def _saved_once(shapes_data_dir, tmp_path_factory):
  """The folder of `saved`'s checkpoints, saved once per session (xdist worker): building and
  saving them took ~2 s, for each of ~30 tests."""
  folder = tmp_path_factory.mktemp("saved")
  config = tiny_config(shapes_data_dir)
  tokenizer, t5_config, pretrained = build_text(config)
  state = _quick_state(build_models(config, t5_config), pretrained)
  manager, it = _fresh(config, tokenizer, folder)  # as the tests restore into
  states, data = {}, {0: it.get_state()}
  for step in (2, 4):
    next(it), next(it)  # one batch per step, as train() reads (restore_latest checks it)
    states[step] = state.replace(step=np.int32(step), g_params=jax.tree.map(
        lambda x, s=step: x + s, state.g_params))
    checkpoint.save(manager, step, states[step], it, config)
    data[step] = it.get_state()
  manager.wait_until_finished()
  manager.close()
  return folder, tokenizer, states, data


@pytest.fixture
def saved(_saved_once, shapes_data_dir, tmp_path):
  """Checkpoints at steps 2 and 4 of host-drawn states (nothing compiled) with the iterator, in
  this test's tmp_path (a copy): the config (a new one, for the test to change), tokenizer,
  states and iterator states by step."""
  folder, tokenizer, states, data = _saved_once
  shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
  return tiny_config(shapes_data_dir), tokenizer, dict(states), dict(data)
