"""Batch buckets: calls with different image or prompt counts share a few compiled programs
(batch rounded up to 2**k or 3 * 2**k times the device count), with unchanged results; each batch
split over the devices."""
from __future__ import annotations

import importlib

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from llmimg_jax.sample import CaptionExpander, Sampler
from llmimg_jax.sample.expand import batch_bucket
from llmimg_jax.train.mesh import make_mesh

# The module, not the `generate` function that llmimg_jax.text exports under the same name.
t5_generate = importlib.import_module("llmimg_jax.text.generate")


def test_sampler_compiles_one_program_per_bucket(sampler):
  """Each batch shape compiles anew (seconds each): 1, 9, 17, 20, 25 and 40 images take batches
  of 8, 16, 24, 24, 32 and 2 x 24 on 8 devices, four programs (powers of two alone: 8, 16, 32, 32,
  32 and 2 x 32)."""
  s = Sampler(sampler.models, sampler.tokenizer, sampler.ema_params, sampler.text_params,
              mesh=sampler.mesh, batch_size=32)
  images = {n: s(["a red circle"], seed=3, num_per_prompt=n) for n in (1, 9, 17, 20, 25, 40)}
  assert sorted(batch for batch, _ in s._compiled) == [8, 16, 24, 32]
  # Column j of a prompt is the same image whatever batch (and bucket) computed it, up to a
  # uint8 step where XLA's float rounding differs between batch shapes (sampler's docstring).
  for n, got in images.items():
    assert got.shape == (n, 32, 32, 3)
    difference = np.abs(got.astype(np.int16) - images[40][:n])
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3, (n, difference.max())


def test_expander_compiles_one_generation_per_bucket(expander_dir):
  """`min(batch_size, len(prompts))` rows compiled one generation per prompt count: 1 to 5
  prompts with batch_size 4 compiled 1, 2, 3 and 4 rows; now 1, 2, 3 and 4 prompts take as many
  rows and 5 prompts two calls of 3."""
  # max_new_tokens=5 is this test's own (a static argument): every program counted is new.
  expander = CaptionExpander.from_pretrained(expander_dir, template="Draw: {prompt}",
                                             max_new_tokens=5, batch_size=4)
  prompts = ["a red circle", "a star", "two squares", "a blue sky", "a green tree"]
  before = t5_generate._generate._cache_size()
  captions = {n: expander(prompts[:n]) for n in range(1, 6)}
  assert t5_generate._generate._cache_size() - before == 4  # 1, 2, 3 and 4 rows
  # A prompt's caption does not depend on the batch (or the padding rows) it was generated in.
  assert all(captions[5]) and captions[5] != prompts
  for n, got in captions.items():
    assert got == captions[5][:n]


def test_buckets_are_two_to_the_k_or_three_times_that_times_the_multiple():
  assert [batch_bucket(n, 1000) for n in (1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33)] == [
      1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48]
  assert [batch_bucket(n, 40, 8) for n in (1, 8, 9, 17, 32, 33, 41, 100)] == [
      8, 8, 16, 24, 32, 40, 24, 40]  # 41: two calls of 24, not of 40
  assert [batch_bucket(n, 4) for n in (1, 2, 3, 4, 5, 9)] == [1, 2, 3, 4, 3, 3]
  assert batch_bucket(1, 8, 8) == 8  # one image on 8 devices: one row each
  assert batch_bucket(65, 64) == 48
  for multiple, cap in ((1, 64), (8, 64), (8, 40), (4, 4)):
    for count in range(1, 300):
      rows = batch_bucket(count, cap, multiple)
      calls = -(-count // rows)
      assert rows % multiple == 0 and rows <= cap, (count, cap, multiple, rows)
      assert calls == -(-count // cap)  # no more calls than full ones would take
      if rows > 2 * multiple and rows < cap:  # each call pads less than a third of its rows
        assert calls * rows - count < calls * rows / 3, (count, cap, multiple, rows)


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


def test_expander_docstring_names_the_batch_sizes_it_uses():
  """CaptionExpander's docstring said batches of 1, 2, 4, ... rows; batch_bucket gives 3, 6 too."""
  import re
  doc = " ".join(CaptionExpander.__doc__.split())
  listed = re.search(r"in batches of ([\d, ]+)\.\.\. rows", doc)
  sizes = [int(x) for x in listed.group(1).split(",") if x.strip()]
  used = sorted({batch_bucket(n, 64) for n in range(1, 65)})
  assert sizes == used[:len(sizes)] and len(sizes) >= 4, (sizes, used)


def test_eight_devices_each_generate_a_share_and_the_same_images_as_one(sampler):
  """sample.py's mesh is every local device: each batch is split over them, params replicated."""
  prompts = ["a red circle", "a big blue square in the center"]
  images = sampler(prompts, seed=3, num_per_prompt=5)  # 10 images: two batches of 8 rows
  mesh = sampler.mesh
  (params, text, key, *rows, _), _ = sampler._compiled[(8, False)].input_shardings
  assert mesh.devices.size == 8 and all(
      s.is_equivalent_to(NamedSharding(mesh, P("data")), 2) for s in rows)
  assert all(s.is_fully_replicated for s in jax.tree.leaves((params, text, key)))
  one = make_mesh(jax.devices()[:1])
  on_one = jax.device_put((sampler.ema_params, sampler.text_params), NamedSharding(one, P()))
  single = Sampler(sampler.models, sampler.tokenizer, *on_one, mesh=one, batch_size=8)
  difference = np.abs(images.astype(np.int16) - single(prompts, seed=3, num_per_prompt=5))
  assert difference.max() <= 1 and (difference > 0).mean() < 1e-3, difference.max()


def test_a_batch_with_some_non_finite_images_is_refused(sampler):
  """The check must catch one NaN image among finite ones, not only a batch of them: NaN in the
  embedding of a byte only the second prompt holds makes its images alone NaN."""
  prompts = ["a red circle", "a blue square"]
  ids = sampler.tokenizer(prompts)["input_ids"]
  own = np.setdiff1d(ids[1], ids[0])  # the bytes of "blue square" that "a red circle" lacks
  text_params = jax.tree.map(np.array, sampler.text_params)  # writable copies
  text_params["shared"]["embedding"][own] = np.nan
  broken = Sampler(sampler.models, sampler.tokenizer, sampler.ema_params, text_params,
                   mesh=sampler.mesh, step=sampler.step)
  assert len(broken.sample(prompts[:1], num_per_prompt=2).images) == 2  # the first: finite
  with pytest.raises(ValueError, match=r"^2 of 4 generated images are not finite .* the first: "
                                       r"image 0 of prompt 'a blue square'\."):
    broken.sample(prompts, num_per_prompt=2)
