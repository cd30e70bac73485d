"""TextGenerator / generate API: argument errors name the argument, and one compiled program per
shape (values that only enter arithmetic never recompile)."""
from __future__ import annotations

import importlib
import logging
import re

import jax
import numpy as np
import pytest

from llmimg_jax.text import TextGenerator, generate

generate_module = importlib.import_module("llmimg_jax.text.generate")  # the function shadows it

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


def test_greedy_and_min_new_tokens_reuse_one_compiled_program(generator):
  """Greedy search draws nothing, yet seed=[...] (per-row keys) compiled a second program; and
  every min_new_tokens value compiled its own, though it only enters a comparison."""
  kw = dict(max_new_tokens=3, num_beams=1)
  batch = generator.tokenizer(["a red fox", "b"])
  cfg, params = generator.config, generator.params
  before = generate_module._generate._cache_size()
  first = generator.generate_tokens(batch, seed=0, **kw)
  after_first = generate_module._generate._cache_size()
  assert generator.generate_tokens(batch, seed=[1, 2], **kw) == first
  for k in (1, 2, 3):
    out = generate(params, cfg, batch["input_ids"], batch["attention_mask"], min_new_tokens=k,
                   **kw)
    assert np.asarray(out).shape == (2, 3)
  assert generate_module._generate._cache_size() == after_first <= before + 1


@pytest.mark.parametrize("top_k", [2.5, 1e9 + 0.5])
def test_sampling_refuses_a_top_k_that_is_not_a_whole_number(generator, top_k):
  """top_k=2.5 sampled with top_k=2 without a word (transformers refuses it)."""
  with pytest.raises(ValueError, match=rf"top_k={top_k}"):
    generator.generate(["a"], max_new_tokens=2, seed=0, do_sample=True, top_k=top_k)


@pytest.mark.parametrize("kw, error", [
    ({"do_sample": True, "temperature": 1e-40}, r"Sampling needs temperature from 1e-06 to "
     r"3.4e\+38 \(lower is greedy decoding: do_sample=False\)"),  # 0 in float32: NUL characters
    # inf in float32: NaN logits where min_new_tokens holds EOS back, which the draw then picked
    ({"do_sample": True, "temperature": float("inf"), "min_new_tokens": 2},
     r"Sampling needs temperature from 1e-06 to 3.4e\+38"),
    ({"do_sample": True, "temperature": 1e39}, r"Sampling needs temperature from 1e-06 to"),
    # NaN scores: rows of pad tokens, without a word
    ({"num_beams": 2, "length_penalty": float("nan")}, r"length_penalty=nan with max_new_tokens=2: "
     r"\(max_new_tokens \+ 1\) \*\* length_penalty leaves float32's range; keep \|length_penalty\| "
     r"\* ln\(max_new_tokens \+ 1\) below 87 \(1.0: none; > 0 favours longer sequences\)\.$"),
    ({"num_beams": 2, "length_penalty": -1e39}, r"length_penalty=-1e\+39 with max_new_tokens"),
    ({"num_beams": 2, "length_penalty": -80.0}, r"length_penalty=-80.0 with max_new_tokens"),
    ({"max_new_tokens": 2**31}, r"max_new_tokens=2147483648 must be < 2\*\*31"),  # jit traceback
])
def test_a_temperature_or_length_that_float32_or_int32_cannot_hold_is_refused(generator, kw,
                                                                              error):
  with pytest.raises(ValueError, match=f"^{error}"):
    generator.generate(["a"], seed=0, **{"max_new_tokens": 2, **kw})
  with pytest.raises(ValueError, match=r"max_length must be < 2\*\*31"):  # the OOM killer
    type(generator.tokenizer)(generator.tokenizer.hf, 2**31)


def test_min_new_tokens_past_max_new_tokens_is_named(generator, caplog):
  """min_new_tokens > max_new_tokens was clamped without a word (transformers warns that the
  length constraints are unfeasible): no row could end with EOS."""
  batch = generator.tokenizer(["a red fox"])
  args = (generator.params, generator.config, batch["input_ids"], batch["attention_mask"])
  with caplog.at_level(logging.WARNING):
    out = np.asarray(generate(*args, max_new_tokens=3, min_new_tokens=5))
  assert "min_new_tokens=5 is more than max_new_tokens=3" in caplog.text
  assert generator.config.eos_token_id not in out
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    generate(*args, max_new_tokens=3, min_new_tokens=3)
  assert "min_new_tokens" not in caplog.text


@pytest.mark.parametrize("kw, named", [
    ({"max_new_tokens": 2.5}, "max_new_tokens=2.5"), ({"num_beams": 2.5}, "num_beams=2.5"),
    ({"min_new_tokens": 1.5}, "min_new_tokens=1.5")])
def test_a_length_or_beam_count_that_is_not_a_whole_number_is_refused(generator, kw, named):
  """int() truncated them without a word: max_new_tokens=2.5 generated 2 tokens, num_beams=2.5
  searched with 2 beams (as top_k, refused)."""
  batch = generator.tokenizer(["a red fox"])
  with pytest.raises(ValueError, match=rf"^{re.escape(named)}: pass whole numbers"):
    generate(generator.params, generator.config, batch["input_ids"], batch["attention_mask"],
             **{"max_new_tokens": 3, **kw})


@pytest.mark.parametrize("texts", [["a", "b"], ["a", "b", "c"], ["a", "b", "c", "d"]])
@pytest.mark.parametrize("key", ["raw", "typed", "rbg", "unsafe_rbg"])
def test_a_jax_key_as_seed_is_named_as_one(generator, texts, key):
  """seed=jax.random.PRNGKey(0) was taken for one seed per text: "seed[0]=Array(0, dtype=uint32)
  is a ArrayImpl" for 2 texts, "seed must be one int or one per text (3 texts); got 2" for 3; a
  typed key's error spanned lines ('overlaying: ...'). Under jax_default_prng_impl rbg or
  unsafe_rbg, PRNGKey's raw key data is uint32 [4]: 4 texts took it for 4 seeds, silently."""
  import jax
  with jax.default_prng_impl(key if "rbg" in key else jax.config.jax_default_prng_impl):
    seed = jax.random.key(0) if key == "typed" else jax.random.PRNGKey(0)
    raw = "" if key == "typed" else (  # which uint32 arrays are keys, where seeds are taken
        r" A JAX uint32 array whose last dimension is 2 or 4 is taken for raw key data "
        r"\(jax\.random\.PRNGKey's\) under any jax_default_prng_impl: pass int seeds as ints, a "
        r"list or a NumPy array\.")
    with pytest.raises(TypeError, match=r"^seed is a JAX array \(.*: a PRNG key\?\); pass an "
                       rf"int seed, from which the key is made\.{raw}$"):
      generator.generate(texts, max_new_tokens=2, seed=seed, do_sample=True)


@pytest.mark.parametrize("made, passed, texts", [
    ("threefry2x32", "rbg", ["a", "b"]), ("threefry2x32", "unsafe_rbg", ["a", "b"]),
    ("rbg", "threefry2x32", ["a", "b", "c", "d"]), ("unsafe_rbg", "threefry2x32", ["a"] * 4)])
def test_a_raw_key_of_another_prng_implementation_is_named_as_one(generator, made, passed, texts):
  """Raw keys were told from seeds by the default implementation's key length: a threefry2x32
  PRNGKey (uint32 [2]) passed under an rbg default sampled 2 texts with seeds 0 and 7, and an rbg
  one (uint32 [4]) 4 texts, silently. Raw key data name no implementation (jax.random.key_impl
  reads the default's), so uint32 [..., 2] and [..., 4] are keys under every default."""
  import jax
  with jax.default_prng_impl(made):
    key = jax.random.PRNGKey(7)
  with jax.default_prng_impl(passed):
    with pytest.raises(TypeError, match=rf"^seed is a JAX array \(uint32 \[{len(key)}\]: a PRNG key"
                       r"\?\); pass an int seed, from which the key is made\. A JAX uint32 "
                       r"array whose last dimension is 2 or 4 is taken for raw key data"):
      generator.generate(texts, max_new_tokens=2, seed=key, do_sample=True)
    # int seeds in any other form are seeds under every default
    assert len(generator.generate(texts, max_new_tokens=2, seed=list(range(len(texts))),
                                  do_sample=True)) == len(texts)


@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
def test_rows_sampled_under_the_rbg_prngs_follow_their_own_keys(generator, impl, caplog):
  """Under the rbg PRNGs JAX's vmap draws a batch from its first key alone (rng_bit_generator's
  batching rule): a row's sample followed the first row's seed and its place in the batch, not
  its own seed (warned of on every call). Raw keys under an rbg default, and typed rbg keys."""
  import jax
  texts, kw = ["a red fox"] * 3, dict(max_new_tokens=8, do_sample=True, temperature=2.0)
  with caplog.at_level(logging.WARNING), jax.default_prng_impl(impl):
    rows = generator.generate(texts, seed=[0, 1, 0], **kw)
    other = generator.generate(texts, seed=[0, 2, 0], **kw)
    alone = [generator.generate(texts[:1], seed=[s], **kw)[0] for s in (0, 1, 2)]
  assert rows[0] == rows[2] == other[0] == other[2] == alone[0]  # equal keys, equal samples
  assert rows[1] == alone[1] != other[1] == alone[2]  # its own key, wherever it sits
  assert rows[0] != rows[1]
  batch = generator.tokenizer(texts)  # typed keys carry their implementation
  keys = jax.numpy.stack([jax.random.key(s, impl=impl) for s in (5, 6, 5)])
  typed = np.asarray(generate(generator.params, generator.config, batch["input_ids"],
                              batch["attention_mask"], rng=keys, **kw))
  first = np.asarray(generate(generator.params, generator.config, batch["input_ids"][1:],
                              batch["attention_mask"][1:], rng=keys[1:], **kw))
  np.testing.assert_array_equal(typed[1:], first)  # row 1 without row 0 before it
  assert (typed[0] == typed[2]).all() and (typed[0] != typed[1]).any()
  assert "first key alone" not in caplog.text


def test_seeds_are_told_from_keys_under_jax_enable_custom_prng(generator):
  """With jax_enable_custom_prng, jax.random.PRNGKey returns a typed key: the raw key length was
  read from its shape, (), and any uint32 seed array failed with 'IndexError: tuple index out of
  range'."""
  import jax
  import jax.numpy as jnp
  texts, kw = ["a red fox", "b", "c c"], dict(max_new_tokens=3, do_sample=True)
  per_text = generator.generate(texts, seed=[0, 1, 2], **kw)
  with jax.enable_custom_prng(True):
    assert generator.generate(texts, seed=jnp.arange(3, dtype=jnp.uint32), **kw) == per_text
    with pytest.raises(TypeError, match=r"^seed is a JAX array \(.*: a PRNG key\?\)"):
      generator.generate(texts, seed=jax.random.PRNGKey(0), **kw)


def test_jax_int_seeds_are_seeds_as_numpy_s_are(generator):
  """seed=jnp.arange(3) (one per text) and jnp.int32(5) were refused as "seed is a JAX array
  (int32 [3]: a PRNG key?)", where np.arange(3), a list and np.int32(5) generate."""
  import jax.numpy as jnp
  texts, kw = ["a red fox", "b", "c c"], dict(max_new_tokens=3, do_sample=True)
  per_text = generator.generate(texts, seed=[0, 1, 2], **kw)
  assert generator.generate(texts, seed=jnp.arange(3), **kw) == per_text
  assert generator.generate(texts, seed=jnp.arange(3, dtype=jnp.uint32), **kw) == per_text
  assert generator.generate(texts, seed=jnp.int32(5), **kw) == generator.generate(texts, seed=5,
                                                                                   **kw)
  with pytest.raises(ValueError, match=r"^seed must be one int or one per text \(3 texts\); got 2"):
    generator.generate(texts, seed=jnp.arange(2), **kw)
  with pytest.raises(TypeError, match=r"^seed is a JAX array \(float32 \[\]\); pass an int\.$"):
    generator.generate(texts, seed=jnp.float32(2.0), **kw)


@pytest.mark.parametrize("rng, got", [(0, r"int32 \[\]"), ([1, 2, 3], r"int32 \[3\]"),
                                      (np.arange(6.0).reshape(3, 2), r"float32 \[3, 2\]")])
def test_seeds_where_keys_are_meant_are_named(generator, rng, got):
  """generate(..., rng=0) said 'rng must be one key or one key per row (3 rows); got an array of
  shape ()', naming no fix; per-row seeds failed inside jax.random ('invalid PRNG key data')."""
  batch = generator.tokenizer(["a", "b", "c"])
  with pytest.raises(TypeError, match=rf"^rng must be a JAX PRNG key \(jax\.random\.PRNGKey\(seed\)"
                     rf".*; got {got} \(int seeds\? TextGenerator\.generate takes those\)\.$"):
    generate(generator.params, generator.config, batch["input_ids"], batch["attention_mask"],
             max_new_tokens=2, do_sample=True, rng=rng)


@pytest.mark.parametrize("made, passed, split", [("threefry2x32", "rbg", 0),
                                                  ("threefry2x32", "rbg", 3),
                                                  ("rbg", "threefry2x32", 3)])
def test_raw_keys_of_another_prng_implementation_are_named(generator, made, passed, split):
  """generate(rng=...) with raw keys made under another jax_default_prng_impl failed in jax.random
  as 'JAX encountered invalid PRNG key data: expected key_data.shape to end with (4,); got
  shape=(2,) for impl=PRNGImpl(key_shape=(4,), seed=<function _rbg_seed at 0x...>, ...', naming
  neither the argument nor the fix."""
  import jax
  batch = generator.tokenizer(["a", "b", "c"])
  with jax.default_prng_impl(made):
    rng = jax.random.PRNGKey(0)
    rng = jax.random.split(rng, split) if split else rng
  want = 4 if "rbg" in passed else 2
  with jax.default_prng_impl(passed):
    with pytest.raises(TypeError, match=rf"^rng must be raw key data ending in {want} "
                       rf"\(jax\.random\.PRNGKey\(seed\)'s under jax_default_prng_impl={passed}\)"
                       rf", one key or one per row; got uint32 {re.escape(str(list(rng.shape)))} "
                       r"\(a key made under another default\?\)\. Typed keys"):
      generate(generator.params, generator.config, batch["input_ids"], batch["attention_mask"],
               max_new_tokens=2, do_sample=True, rng=rng)


@pytest.mark.parametrize("kw, fix", [
    ({"rng": None}, r"rng= \(pass seed=, an int or one per text"),
    ({"dtype": "bfloat16"}, r"dtype= \(the compute dtype is the TextGenerator's"),
    ({"max_length": 5}, r"max_length= \(pass max_new_tokens=; .* max_length - 1\)")])
def test_generate_s_own_arguments_are_named_with_their_fix(generator, kw, fix):
  """rng= and dtype= (generate()'s) failed as 'generate() got multiple values for keyword
  argument', transformers' max_length= as 'got an unexpected keyword argument', naming no fix."""
  with pytest.raises(TypeError, match=rf"^TextGenerator\.generate takes no {fix}"):
    generator.generate(["a"], max_new_tokens=2, **kw)


def test_an_option_given_as_none_is_named(generator):
  """max_new_tokens=None or top_k=None (transformers' "unset") failed with "'<' not supported
  between instances of 'NoneType' and 'int'", naming no option."""
  batch = generator.tokenizer(["a"])
  with pytest.raises(TypeError, match=r"^max_new_tokens=None, top_k=None: pass a number "
                                      r"\(min_new_tokens=0 for no minimum, top_k=0 for no top-k"):
    generate(generator.params, generator.config, batch["input_ids"], max_new_tokens=None,
             top_k=None)
  with pytest.raises(TypeError, match=r"^min_new_tokens=None: pass a number"):
    generator.generate(["a"], max_new_tokens=2, min_new_tokens=None)


@pytest.mark.parametrize("kw", [{"num_beams": 1}, {"num_beams": 2},
                                {"do_sample": True, "seed": 0}])
def test_generation_needs_no_rank_promotion(generator, kw):
  """Under jax_numpy_rank_promotion='raise' (set by projects that catch their own implicit
  broadcasts) every decoding raised in the RMS norm's weight * x; now the same tokens."""
  texts = ["a red fox", "b"]
  want = generator.generate(texts, max_new_tokens=3, **kw)
  with jax.numpy_rank_promotion("raise"):
    assert generator.generate(texts, max_new_tokens=3, **kw) == want
