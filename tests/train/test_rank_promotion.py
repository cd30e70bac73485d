"""Under jax_numpy_rank_promotion='raise', which projects set to catch their own implicit
broadcasts (flax's and t5x's tests do): the package broadcasts explicitly."""
from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from llmimg_jax.gan import layers
from llmimg_jax.train.state import build_models, build_text, init_state
from llmimg_jax.train.step import generate_images, train_step
from tests.train.utils import _batch, tiny_config


@pytest.mark.parametrize("matmul_reductions", [True, False])  # the layers' two forms of bias add
def test_training_and_sampling_trace_without_rank_promotion(tmp_path, monkeypatch,
                                                            matmul_reductions):
  """They raised in T5's RMS norm (weight * x) and the GAN's bias adds: train.py stopped with a
  traceback before its first step."""
  monkeypatch.setattr(layers, "MATMUL_REDUCTIONS", matmul_reductions)
  cfg = tiny_config(tmp_path)
  tokenizer, t5_config, _ = build_text(cfg)
  models = build_models(cfg, t5_config)
  batch = _batch(cfg, tokenizer)
  with jax.numpy_rank_promotion("raise"):  # tracing is where it raises: no compiling here
    state = jax.eval_shape(functools.partial(init_state, models), jax.random.PRNGKey(0), None)
    new_state, metrics = jax.eval_shape(functools.partial(train_step, models), state, batch)
    z = jax.ShapeDtypeStruct((len(batch["input_ids"]), cfg.model.z_dim), np.float32)
    images = jax.eval_shape(functools.partial(generate_images, models), state.ema_params,
                            state.text_params, z, batch["input_ids"], batch["attention_mask"])
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert metrics["g_loss"].shape == ()
  assert images.shape == batch["image"].shape and images.dtype == np.uint8
