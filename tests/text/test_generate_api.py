"""TextGenerator / generate API: argument errors name the argument."""
from __future__ import annotations

import re

import pytest

from llmimg_jax.text import TextGenerator

MAX_LEN = 16


@pytest.fixture(scope="module")
def generator(relu_tied):
  return TextGenerator.from_pretrained(relu_tied.path, max_length=MAX_LEN)


@pytest.mark.parametrize("seed,named", [
    (1.5, "seed=1.5 is a float"), ("3", "seed='3' is a str"), (None, "seed=None is a NoneType"),
    (True, "seed=True is a bool"), ([0, 2.5], "seed[1]=2.5 is a float")])
def test_a_seed_that_is_not_an_int_is_named(generator, seed, named):
  """seed=1.5 was "object of type 'float' has no len()", '3' a str/int comparison TypeError."""
  with pytest.raises(TypeError, match=rf"^{re.escape(named)}; pass an int"):
    generator.generate(["a", "b"], max_new_tokens=2, seed=seed, do_sample=True)


def test_from_pretrained_names_a_seed_that_is_not_an_int():
  """A float seed failed in jax.random.PRNGKey as 'got JitTracer(~float32[])'."""
  with pytest.raises(TypeError, match=r"^seed=2\.5 is a float; pass an int"):
    TextGenerator.from_pretrained(None, max_length=MAX_LEN, seed=2.5)

