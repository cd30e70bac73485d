"""The images' noise (llmimg_jax/prng.py's noise_key) does not depend on jax_default_prng_impl:
sample.py, evaluate.py and the training's sample grids give a seed's images under any PRNG."""
import types

import jax
import numpy as np
import pytest

from llmimg_jax.eval.generate import generate_for_captions
from llmimg_jax.prng import noise_key
from llmimg_jax.sample import Sampler
from llmimg_jax.train.samples import SampleWriter

PRNGS = ["rbg", "unsafe_rbg"]


def test_the_noise_key_is_jax_s_default_prng_key():
  """Threefry2x32 (JAX's default): images under the default PRNG are those of before, whose key
  was jax.random.PRNGKey(seed), [0, seed] under it (whatever this process's default is)."""
  for seed in (0, 3, 2**31, 2**32 - 1):
    np.testing.assert_array_equal(jax.random.key_data(noise_key(seed)), np.uint32([0, seed]))


@pytest.mark.parametrize("impl", PRNGS)
def test_a_seed_samples_the_same_images_under_any_default_prng(sampler, impl):
  """sample.py --seed 0 under JAX_DEFAULT_PRNG_IMPL=rbg wrote other images than under the
  default, with the same seed in samples.jsonl."""
  want = sampler(["a red circle", "a blue square"], seed=5, num_per_prompt=3)
  with jax.default_prng_impl(impl):
    other = Sampler(sampler.models, sampler.tokenizer, sampler.ema_params, sampler.text_params,
                    mesh=sampler.mesh, batch_size=8)  # compiled under `impl`
    got = other(["a red circle", "a blue square"], seed=5, num_per_prompt=3)
    truncated = other(["a red circle"], seed=5, num_per_prompt=3, truncation=0.5)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(truncated, sampler(["a red circle"], seed=5, num_per_prompt=3,
                                                   truncation=0.5))
  assert len({image.tobytes() for image in want}) == 6


@pytest.mark.parametrize("impl", PRNGS)
def test_a_seed_evaluates_the_same_images_under_any_default_prng(sampler, impl):
  """evaluate.py and the training's evaluation (generate_for_captions) drew their noise from the
  default PRNG's key."""
  captions = ["a red circle", "a blue square", "a green triangle"]
  args = (sampler.models, sampler.ema_params, sampler.text_params, sampler.tokenizer, captions)
  want = generate_for_captions(*args, seed=3, batch_size=8, mesh=sampler.mesh)
  with jax.default_prng_impl(impl):
    got = generate_for_captions(*args, seed=3, batch_size=8, mesh=sampler.mesh)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("impl", PRNGS)
def test_the_training_s_sample_grid_has_the_same_noise_under_any_default_prng(
    sampler, tmp_path, impl):
  state = types.SimpleNamespace(ema_params=sampler.ema_params, text_params=sampler.text_params)
  args = (sampler.models, sampler.tokenizer, sampler.config, tmp_path, sampler.mesh)
  want = SampleWriter(*args).images(state)
  with jax.default_prng_impl(impl):
    got = SampleWriter(*args).images(state)
  np.testing.assert_array_equal(got, want)
