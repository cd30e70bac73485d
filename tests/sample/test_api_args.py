"""The Python API's argument types: a value of the wrong type is named, not misreported."""
from __future__ import annotations

import re
import types

import numpy as np
import pytest

from llmimg_jax.sample import CaptionExpander, Sampler, restore_for_sampling
from llmimg_jax.sample.expand import DEFAULT_TEMPLATE, check_options


@pytest.mark.parametrize("step", ["2", 2.0, True])
def test_a_step_that_is_not_an_int_is_named_as_such(run, step):
  """step="2" (e.g. read from argparse or a file) was reported as 'No checkpoint for step 2 ...;
  available steps: [1, 2]', contradicting itself."""
  with pytest.raises(TypeError, match=re.escape(
      f"Checkpoint step {step!r} is a {type(step).__name__}, not an int; pass an int (available "
      "steps: [1, 2]), or None for the latest.")):
    restore_for_sampling(run.workdir, step=step)


def test_a_numpy_integer_step_restores(run):
  assert restore_for_sampling(run.workdir, step=np.int64(1)).step == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"num_per_prompt": 2.5}, "num_per_prompt=2.5 is a float; pass an int."),
    ({"num_per_prompt": "4"}, "num_per_prompt='4' is a str; pass an int."),
    ({"seed": 1.5}, "seed=1.5 is a float; pass an int."),
])
def test_a_count_or_seed_that_is_not_an_int_is_named(sampler, kwargs, message):
  """num_per_prompt=2.5 failed inside jax.jit with a traceback printing the whole model, seed=1.5
  as 'PRNG key seed must be an integer; got JitTracer(~float32[])'."""
  with pytest.raises(TypeError, match=re.escape(message)):
    sampler(["a red circle"], **kwargs)


def test_numpy_integer_count_and_seed_sample(sampler):
  images = sampler(["a red circle"], seed=np.int64(3), num_per_prompt=np.int32(2))
  assert images.shape[0] == 2
  assert np.array_equal(images, sampler(["a red circle"], seed=3, num_per_prompt=2))


@pytest.mark.parametrize("key", ["raw", "typed"])
def test_a_jax_key_as_seed_is_named_as_one(sampler, key):
  """seed=jax.random.key(0) was 'seed=Array((), dtype=key<fry>) overlaying:\n[0 0] is a
  PRNGKeyArray', over two lines, PRNGKey(0) 'is a ArrayImpl': named as a key, as
  TextGenerator.generate and generate_for_captions name it. A JAX int seed samples as the int."""
  import jax
  seed = jax.random.PRNGKey(0) if key == "raw" else jax.random.key(0)
  with pytest.raises(TypeError, match=r"^seed is a JAX array \(.*: a PRNG key\?\); pass an int "
                     r"seed, from which the key is made\.$"):
    sampler(["a red circle"], seed=seed)
  result = sampler.sample(["a red circle"], seed=jax.numpy.int32(3))
  assert type(result.seed) is int and np.array_equal(result.images,
                                                     sampler(["a red circle"], seed=3))


@pytest.mark.parametrize("batch_size", [2.5, 16.0, True, "16"])
def test_a_sampler_batch_size_that_is_not_an_int_is_named(sampler, batch_size):
  """batch_size=16.0 was accepted, then a call needing a full float batch failed in range();
  True was taken as 1."""
  with pytest.raises(TypeError, match=re.escape(
      f"Sampler batch_size={batch_size!r} is a {type(batch_size).__name__}; pass an int.")):
    Sampler(sampler.models, sampler.tokenizer, sampler.ema_params, sampler.text_params,
            mesh=sampler.mesh, batch_size=batch_size)


@pytest.mark.parametrize("name, value", [
    ("max_new_tokens", 3.5), ("max_new_tokens", True), ("num_beams", 2.0), ("batch_size", 2.5),
    ("batch_size", True), ("seed", 1.0),
])
def test_expander_counts_and_seed_that_are_not_ints_are_named(name, value):
  """max_new_tokens=3.5 was cut to 3 without a word (num_beams likewise), batch_size=2.5 failed
  as range()'s "'float' object cannot be interpreted as an integer", and seed=1.0 drew other
  sampled captions than seed=1."""
  with pytest.raises(TypeError, match=re.escape(
      f"CaptionExpander {name}={value!r} is a {type(value).__name__}; pass an int.")):
    CaptionExpander(types.SimpleNamespace(), **{name: value})


@pytest.mark.parametrize("name, value", [("max_new_tokens", 0), ("num_beams", 0),
                                         ("batch_size", 0)])
def test_expander_counts_out_of_range_are_named_as_its_arguments(name, value):
  """They said 'expand max_new_tokens=0 must be >= 1.' (neither sample.py's --expand_ flag nor
  the argument), beside the argument names of CaptionExpander's other errors ('pass
  do_sample=True'); they name the class and the argument, as the Sampler's 'Sampler batch_size'."""
  with pytest.raises(ValueError, match=f"^CaptionExpander {name}={value} must be >= 1\\.$"):
    CaptionExpander(types.SimpleNamespace(), **{name: value})


def test_check_options_refuses_float_counts():
  """sample.py checks the expansion options before the model loads, with the same messages."""
  with pytest.raises(TypeError, match=re.escape("CaptionExpander num_beams=1.5 is a float; pass "
                                                "an int.")):
    check_options(DEFAULT_TEMPLATE, 8, 1.5, False, 1.0, 1.0)


def test_numpy_integer_count_and_seed_are_written_to_samples_jsonl(sampler, tmp_path):
  """Accepted as ints, they were kept as numpy ints: write_samples then failed in json.dumps
  ('Object of type int32 is not JSON serializable') after sampling, and nothing was written."""
  from llmimg_jax.sample import write_samples
  result = sampler.sample(["a red circle"], seed=np.int64(3), num_per_prompt=np.int32(2))
  assert type(result.seed) is int and type(result.num_per_prompt) is int
  records = write_samples(result, tmp_path)
  assert [(r["seed"], r["sample_index"]) for r in records] == [(3, 0), (3, 1)]
  assert (tmp_path / "samples.jsonl").read_text().count('"seed": 3') == 2


def test_a_path_that_is_not_utf8_is_written_to_samples_jsonl(sampler, tmp_path):
  """A folder name of Latin-1 bytes (legal on Linux; Python holds it with surrogates), such as
  --expand_with's, which samples.jsonl records: its UTF-8 write failed after sampling ('utf-8'
  codec can't encode character '\\udce9'), and nothing was written. It is a JSON escape now, read
  back as the same str."""
  import json

  from llmimg_jax.sample import write_samples
  result = sampler.sample(["a red circle"], seed=0, num_per_prompt=1)
  write_samples(result, tmp_path, {"expander": {"model": "t5_caf\udce9"}})
  line = (tmp_path / "samples.jsonl").read_text(encoding="utf-8")
  assert "t5_caf\\udce9" in line and json.loads(line)["expander"]["model"] == "t5_caf\udce9"


def test_a_record_no_json_holds_is_an_error_before_anything_is_written(sampler, tmp_path):
  """A caller's extra fields with inf or NaN were written as Infinity / NaN, which JSON readers
  other than Python's (JavaScript's, jq's) refuse or change."""
  from llmimg_jax.sample import write_samples
  result = sampler.sample(["a red circle"], seed=0, num_per_prompt=1)
  with pytest.raises(ValueError, match=re.escape(
      "write_samples' extra fields hold NaN or inf ({'expander': {'temperature': inf}}), which "
      "JSON readers refuse: pass finite numbers.")):
    write_samples(result, tmp_path / "out", {"expander": {"temperature": float("inf")}})
  assert not (tmp_path / "out").exists()


def test_a_truncation_float32_cannot_hold_is_refused(sampler, tmp_path):
  """truncation=inf drew infinite noise: black images, exit 0, and 'Infinity' (not JSON) in
  samples.jsonl; 1e39 too (inf in float32, after numpy's overflow warning); 1e-46 (0 in float32)
  drew no noise: the same image num_per_prompt times, the record saying 1e-46."""
  for truncation in (float("inf"), 1e39, 1e-46):
    with pytest.raises(ValueError, match=re.escape(
        f"truncation={truncation} must be from 1.2e-38 to 3.4e+38 (a float32 > 0; e.g. 0.88); "
        "leave it unset for none.")):
      sampler.sample(["a red circle"], truncation=truncation)
