"""Batch buckets: calls with different image or prompt counts share a few compiled programs
(batch rounded up to a power of two times the device count), with unchanged results."""
from __future__ import annotations

import importlib

import numpy as np

from llmimg_jax.sample import CaptionExpander, Sampler
from llmimg_jax.sample.expand import batch_bucket

# The module, not the `generate` function that llmimg_jax.text exports under the same name.
t5_generate = importlib.import_module("llmimg_jax.text.generate")


def test_sampler_compiles_one_program_per_power_of_two_batch(sampler):
  """Each distinct ceil(total / 8) * 8 compiled anew (seconds each): 1, 9, 17 and 20 images
  compiled batches of 8, 16, 24 and 24."""
  s = Sampler(sampler.models, sampler.tokenizer, sampler.ema_params, sampler.text_params,
              mesh=sampler.mesh, batch_size=32)
  images = {n: s(["a red circle"], seed=3, num_per_prompt=n) for n in (1, 9, 17, 20, 25, 40)}
  assert sorted(batch for batch, _ in s._compiled) == [8, 16, 32]  # 40 images: two batches of 32
  # Column j of a prompt is the same image whatever batch (and bucket) computed it.
  for n, got in images.items():
    assert got.shape == (n, 32, 32, 3)
    np.testing.assert_array_equal(got, images[40][:n])


def test_expander_compiles_one_generation_per_power_of_two_batch(expander_dir):
  """`min(batch_size, len(prompts))` rows compiled one generation per prompt count: 1 to 5
  prompts with batch_size 4 compiled 1, 2, 3 and 4 rows."""
  # max_new_tokens=5 is this test's own (a static argument): every program counted is new.
  expander = CaptionExpander.from_pretrained(expander_dir, template="Draw: {prompt}",
                                             max_new_tokens=5, batch_size=4)
  prompts = ["a red circle", "a star", "two squares", "a blue sky", "a green tree"]
  before = t5_generate._generate._cache_size()
  captions = {n: expander(prompts[:n]) for n in range(1, 6)}
  assert t5_generate._generate._cache_size() - before == 3  # 1, 2 and 4 rows
  # A prompt's caption does not depend on the batch (or the padding rows) it was generated in.
  assert all(captions[5]) and captions[5] != prompts
  for n, got in captions.items():
    assert got == captions[5][:n]


def test_buckets_are_powers_of_two_times_the_multiple_capped_at_the_batch_size():
  assert [batch_bucket(n, 40, 8) for n in (1, 8, 9, 17, 32, 33, 41, 100)] == [
      8, 8, 16, 32, 32, 40, 40, 40]
  assert [batch_bucket(n, 4) for n in (1, 2, 3, 4, 5, 9)] == [1, 2, 4, 4, 4, 4]
  assert batch_bucket(1, 8, 8) == 8  # one image on 8 devices: one row each


def test_sampler_compiles_one_program_for_every_truncation(sampler):
  """The truncation was a constant of the compiled program: a sweep over 0.5, 0.7, 0.88, 1.0
  compiled four programs. Now it is an argument: one for truncated noise, one for plain noise,
  and a truncated image is the same whichever value compiled the program."""
  s = Sampler(sampler.models, sampler.tokenizer, sampler.ema_params, sampler.text_params,
              mesh=sampler.mesh, batch_size=8)
  images = {t: s(["a red circle"], seed=3, num_per_prompt=8, truncation=t)
            for t in (0.5, 0.7, 0.88, 1.0, None)}
  assert len(s._compiled) == 2
  fresh = Sampler(sampler.models, sampler.tokenizer, sampler.ema_params, sampler.text_params,
                  mesh=sampler.mesh, batch_size=8)
  np.testing.assert_array_equal(fresh(["a red circle"], seed=3, num_per_prompt=8,
                                      truncation=0.88), images[0.88])
  assert not np.array_equal(images[0.5], images[1.0])
