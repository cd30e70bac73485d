"""The Sampler API: determinism per seed, truncation, outputs, expansion, bad inputs (what it
restores from a run: test_restore.py)."""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import types

import jax
import numpy as np
import pytest
from PIL import Image

from llmimg_jax.images import captioned_grid
from llmimg_jax.sample import CaptionExpander, Sampler, SampleResult, read_prompts, write_samples
from llmimg_jax.sample import outputs
from llmimg_jax.gan.common import image_noise as _noise
from llmimg_jax.sample.expand import DEFAULT_TEMPLATE, check_options
from tests.sample.utils import assert_uint8_of, generator_output

PROMPTS = ["a red circle", "a big blue square in the center"]


def test_same_seed_same_images_whatever_the_batch(sampler):
  images = sampler(PROMPTS, seed=3, num_per_prompt=5)  # two batches of 8, the last one padded
  assert images.shape == (10, 32, 32, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(images, sampler(PROMPTS, seed=3, num_per_prompt=5))
  # Another batch size (one batch of 16) or fewer prompts (one padded batch): the same images.
  other = Sampler(sampler.models, sampler.tokenizer, sampler.ema_params, sampler.text_params,
                  mesh=sampler.mesh, batch_size=16)
  np.testing.assert_array_equal(images, other(PROMPTS, seed=3, num_per_prompt=5))
  np.testing.assert_array_equal(images[5:7], sampler(PROMPTS[1:], seed=3, num_per_prompt=2))
  # Its params on 2 of the devices, or (from the host) on one: XLA's 'input shardings that
  # disagree' at every call.
  from llmimg_jax.train.mesh import make_mesh
  for params in (jax.device_get((sampler.ema_params, sampler.text_params)),
                 (sampler.ema_params, sampler.text_params)):
    on_two = Sampler(sampler.models, sampler.tokenizer, *params,
                     mesh=make_mesh(jax.devices()[2:4]), batch_size=4)
    np.testing.assert_array_equal(images, on_two(PROMPTS, seed=3, num_per_prompt=5))
  with pytest.raises(ValueError, match=r"batch_size=0 must be >= 1"):
    Sampler(sampler.models, sampler.tokenizer, sampler.ema_params, sampler.text_params,
            mesh=sampler.mesh, batch_size=0)
  # Different seeds differ; so do the samples of one prompt (distinct noise per column).
  assert not np.array_equal(images, sampler(PROMPTS, seed=4, num_per_prompt=5))
  assert not np.array_equal(images[0], images[1])


def test_image_j_of_prompt_p_is_the_ema_generator_on_prompt_p_and_noise_j(sampler):
  """The documented mapping: noise normal(fold_in(key(seed), j)), the prompt's T5 states, the
  EMA generator, then [-1, 1] -> uint8."""
  images = sampler(PROMPTS, seed=5, num_per_prompt=2)
  models, params = sampler.models, jax.device_get(sampler.ema_params)
  text_params = jax.device_get(sampler.text_params)
  tokens, z_dim = sampler.tokenizer(PROMPTS), sampler.config.model.z_dim
  for p in range(2):
    ids, mask = tokens["input_ids"][p:p + 1], tokens["attention_mask"][p:p + 1]
    for j in range(2):
      z = jax.random.normal(jax.random.fold_in(jax.random.key(5), j), (1, z_dim))
      assert_uint8_of(images[2 * p + j],
                      generator_output(models, params, text_params, z, ids, mask))


def test_truncation_bounds_the_noise_and_changes_images(sampler):
  z = _noise(jax.random.key(0), np.arange(64), 16, 0.5)  # [64, 16]
  assert float(np.abs(z).max()) <= 1.0 and float(np.abs(z).max()) > 0.9  # 0.5 x [-2, 2]
  full = _noise(jax.random.key(0), np.arange(64), 16, None)
  assert float(np.abs(full).max()) > 1.5
  a = sampler(PROMPTS, seed=0, num_per_prompt=2, truncation=0.5)
  np.testing.assert_array_equal(a, sampler(PROMPTS, seed=0, num_per_prompt=2, truncation=0.5))
  assert not np.array_equal(a, sampler(PROMPTS, seed=0, num_per_prompt=2))
  with pytest.raises(ValueError, match="truncation"):
    sampler(PROMPTS, truncation=0.0)


def test_non_finite_images_are_refused_naming_the_cause(sampler):
  """A huge truncation (or NaN weights) made the generator's output NaN: flat black images,
  written with exit 0."""
  with pytest.raises(ValueError, match=re.escape(
      "4 of 4 generated images are not finite (NaN or inf in the generator's output, which would "
      "be saved as flat colour), the first: image 0 of prompt 'a red circle'. truncation=1e+30 "
      "multiplies the noise: use a smaller one (DF-GAN samples at 0.88). Otherwise check the "
      "run's checkpoint (step 2)")):
    sampler.sample(PROMPTS, num_per_prompt=2, truncation=1e30)
  nan_weights = jax.tree.map(lambda x: x * np.nan, sampler.ema_params)
  broken = Sampler(sampler.models, sampler.tokenizer, nan_weights, sampler.text_params,
                   mesh=sampler.mesh, step=sampler.step)
  with pytest.raises(ValueError, match=r"3 of 3 .*image 0 of prompt 'a red circle'\. Check the "
                                       r"run's checkpoint \(step 2\): its EMA generator"):
    broken.sample(PROMPTS[:1], num_per_prompt=3)


@pytest.mark.parametrize("truncation", [0.5, 0.88])
def test_truncated_noise_follows_the_truncated_normal(truncation):
  """DF-GAN's truncated_noise, t * truncnorm.rvs(-2, 2): no mass piled up at the bounds (as
  clipping would: 4.6% of draws), the scaled truncated normal's spread and CDF (std 0.775 at
  t = 0.88, where a normal truncated to [-t, t] has 0.48)."""
  from scipy import stats
  z = np.asarray(_noise(jax.random.key(1), np.arange(1024), 64, truncation)).ravel()  # [65536]
  assert np.abs(z).max() < 2 * truncation
  assert np.mean(np.abs(z) > 2 * truncation - 1e-4) < 1e-3
  reference = stats.truncnorm(-2, 2, scale=truncation)
  np.testing.assert_allclose(z.std(), reference.std(), rtol=0.01)  # clipped: +9%
  assert abs(z.mean()) < 0.01
  assert stats.kstest(z, reference.cdf).pvalue > 1e-3


@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
@pytest.mark.parametrize("truncation", [None, 0.5])
@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey])
def test_an_images_noise_is_its_own_under_the_rbg_prngs(impl, truncation, make_key):
  """Under rbg and unsafe_rbg (TPU's fast PRNGs), JAX's vmap draws a batch from its first key
  (rng_bit_generator's batching rule): images changed with --batch_size and the device count, and
  the prompts of a grid column did not share their noise."""
  with jax.default_prng_impl(impl):
    key = make_key(7)
    noise = jax.jit(_noise, static_argnums=2)
    z = np.asarray(noise(key, np.array([0, 1, 2, 3, 0, 1]), 16, truncation))  # [6, 16]
    alone = np.stack([noise(key, np.array([i]), 16, truncation)[0] for i in range(4)])
  np.testing.assert_array_equal(z[:4], alone)  # each image's draw, whatever its batch
  np.testing.assert_array_equal(z[4:], z[:2])  # a grid column's shared noise
  assert len({row.tobytes() for row in z[:4]}) == 4


def test_outputs_grid_and_jsonl_agree(sampler, tmp_path):
  result = sampler.sample(PROMPTS, seed=1, num_per_prompt=2)
  records = write_samples(result, tmp_path)
  lines = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
  assert lines == records and len(lines) == 4
  for k, r in enumerate(lines):
    png = np.asarray(Image.open(tmp_path / r["file"]))
    np.testing.assert_array_equal(png, result.images[k])
    assert r["prompt"] == PROMPTS[k // 2] and r["seed"] == 1 and r["step"] == 2
    assert r["caption"] is None
  assert len({r["file"] for r in lines}) == 4
  grid = np.asarray(Image.open(tmp_path / "grid.png"))
  assert grid.shape[1] == 2 * 96 and grid.shape[0] > 2 * 96  # 2 columns, 2 rows + caption lines
  row_h = grid.shape[0] // 2
  for k, image in enumerate(result.images):  # prompt k // 2's row, sample k % 2's column
    y, x = (k // 2) * row_h, (k % 2) * 96
    np.testing.assert_array_equal(grid[y:y + 96, x:x + 96], image.repeat(3, 0).repeat(3, 1))
  np.testing.assert_array_equal(grid, np.asarray(captioned_grid(result.images, PROMPTS)))
  assert result.images_per_sec > 0


def test_an_out_dir_with_earlier_samples_is_refused_or_emptied_first(sampler, tmp_path,
                                                                      monkeypatch):
  write_samples(sampler.sample(PROMPTS, seed=1, num_per_prompt=2), tmp_path)
  fewer = sampler.sample(PROMPTS[:1], seed=2, num_per_prompt=1)
  with pytest.raises(FileExistsError, match=f"'{tmp_path}' already holds samples .*--overwrite"):
    write_samples(fewer, tmp_path)
  records = write_samples(fewer, tmp_path, overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "p0000_s000.png",
                                                        "samples.jsonl"]
  assert [r["seed"] for r in records] == [2]

  # A write that fails (a full disk, here the grid) leaves the earlier samples as they were.
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
  def disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(outputs, "captioned_grid", disk_full)
  with pytest.raises(OSError, match="No space left"):
    write_samples(sampler.sample(PROMPTS, seed=3, num_per_prompt=2), tmp_path, overwrite=True)
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_overwrite_replaces_only_the_files_sample_py_writes(tmp_path):
  """--overwrite deleted every p<digit>*_s<digit>*.png, so a user's copy named
  p0000_s001_favorite.png too; and such a file alone made --out 'already hold samples'."""
  mine = ["p0000_s001_favorite.png", "p2_s3-keep.png", "p0000_s000.png.bak", "p0000_s000.jpg"]
  for name in mine:
    (tmp_path / name).write_bytes(b"the user's")
  images = np.zeros((2, 32, 32, 3), np.uint8)
  result = SampleResult(images, ["a red circle"], ["a red circle"], False, 0, 2, None, 1, 0.1, 0.1)
  write_samples(result, tmp_path)  # no earlier samples here: not refused
  result.seed = 1
  write_samples(result, tmp_path, overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      ["grid.png", "p0000_s000.png", "p0000_s001.png", "samples.jsonl", *mine])
  assert all((tmp_path / name).read_bytes() == b"the user's" for name in mine)
  (tmp_path / "p10000_s1000.png").write_bytes(b"")  # of a call with over 9999 prompts
  assert outputs.old_outputs(tmp_path) == [tmp_path / n for n in (
      "grid.png", "p0000_s000.png", "p0000_s001.png", "p10000_s1000.png", "samples.jsonl")]


def test_overwrite_writes_through_a_link_among_the_outputs(tmp_path):
  """--overwrite replaced a link named as an output (samples.jsonl kept elsewhere) by a file,
  its target left with the earlier samples; it is written through and kept, as evaluate.py's
  --out is. An earlier output the new call does not write goes: the link, not its target."""
  out, kept = tmp_path / "out", tmp_path / "kept"
  kept.mkdir()
  images = np.zeros((2, 32, 32, 3), np.uint8)
  result = SampleResult(images, ["a red circle"], ["a red circle"], False, 0, 2, None, 1, 0.1, 0.1)
  write_samples(result, out)
  for name in ("samples.jsonl", "p0000_s001.png"):
    shutil.move(out / name, kept / name)
    (out / name).symlink_to(kept / name)
  write_samples(dataclasses.replace(result, images=images[:1], seed=1, num_per_prompt=1), out,
                overwrite=True)
  assert sorted(p.name for p in out.iterdir()) == ["grid.png", "p0000_s000.png", "samples.jsonl"]
  assert (out / "samples.jsonl").is_symlink()
  assert [json.loads(line)["seed"] for line in (kept / "samples.jsonl").open()] == [1]
  assert sorted(p.name for p in kept.iterdir()) == ["p0000_s001.png", "samples.jsonl"]


def test_unicode_emoji_and_long_prompts(sampler, caplog):
  prompts = ["生成一张美丽的海滩风景图片", "🐱🌊🌅 a cat by the sea", "a red circle " * 20]
  with caplog.at_level(logging.WARNING):
    images = sampler(prompts, seed=0, num_per_prompt=1)
  assert images.shape == (3, 32, 32, 3)
  assert "is cut to max_length=32 tokens (2 of 3 texts are)" in caplog.text
  assert len({im.tobytes() for im in images}) == 3


def test_bad_prompts_fail_clearly(sampler, tmp_path):
  with pytest.raises(ValueError, match="Prompt #2 of 2 is empty"):
    sampler(["a cat", "  "])
  with pytest.raises(TypeError, match="^Prompt #3 of 3 is a int, not a str: 3$"):
    sampler(["a cat", "a dog", 3])
  with pytest.raises(ValueError, match="No prompts"):
    sampler([])
  empty = tmp_path / "prompts.txt"
  empty.write_text("\n  \n# a comment\n")
  with pytest.raises(ValueError, match=f"Prompts file {empty} has no prompts"):
    read_prompts([], empty)
  with pytest.raises(FileNotFoundError, match="missing.txt"):
    read_prompts([], tmp_path / "missing.txt")
  good = tmp_path / "good.txt"
  good.write_text("# a comment after a BOM\na red circle\n\n生成一张美丽的海滩风景图片\n",
                  encoding="utf-8-sig")  # "UTF-8 with BOM", as Windows editors save it
  assert read_prompts(["x"], good) == ["x", "a red circle", "生成一张美丽的海滩风景图片"]
  assert read_prompts("a cat", good) == ["a cat", "a red circle", "生成一张美丽的海滩风景图片"]
  # Lines end at \n, \r\n and \r only: other characters str.splitlines breaks at stay in.
  odd = tmp_path / "odd.txt"
  odd.write_bytes("a red\u2028circle\r\na blue\x0csquare\ra star\x1c\x85here\n".encode())
  assert read_prompts([], odd) == ["a red\u2028circle", "a blue\x0csquare", "a star\x1c\x85here"]


@pytest.mark.parametrize("expander, error", [
    (lambda prompts: ["one caption"], r"returned 1 caption\(s\) for 2 prompts"),
    (lambda prompts: [*prompts, "extra"], r"returned 3 caption\(s\) for 2 prompts"),
    (lambda prompts: [None, "x"], r"caption 0 is None, not a str"),
])


def test_an_expander_must_give_one_caption_per_prompt(sampler, monkeypatch, expander, error):
  """A custom expander with too few captions failed with an IndexError deep in sample(); with
  too many the extras were dropped without a word."""
  monkeypatch.setattr(sampler, "expander", expander)
  with pytest.raises(ValueError, match=f"The caption expander .*{error}"):
    sampler(["a red circle", "a blue square"])


def test_expansion_conditions_the_generator_and_is_recorded(sampler, expander_dir, tmp_path,
                                                           monkeypatch):
  expander = CaptionExpander.from_pretrained(expander_dir, template="Describe: {prompt}",
                                             max_new_tokens=12)
  captions = expander(PROMPTS)
  assert len(captions) == 2 and all(captions) and set(captions).isdisjoint(PROMPTS)
  monkeypatch.setattr(sampler, "expander", expander)
  result = sampler.sample(PROMPTS, seed=0, num_per_prompt=2)
  monkeypatch.undo()  # the sampler without an expander again, for the comparisons below
  assert result.expanded and result.captions == captions
  np.testing.assert_array_equal(result.images, sampler(captions, seed=0, num_per_prompt=2))
  assert not np.array_equal(result.images, sampler(PROMPTS, seed=0, num_per_prompt=2))
  records = write_samples(result, tmp_path)
  assert [r["caption"] for r in records] == [c for c in captions for _ in range(2)]
  # The grid's rows say what conditioned them: "prompt -> expanded caption".
  labels = [f"{p} -> {c}" for p, c in zip(PROMPTS, captions)]
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "grid.png")),
                                np.asarray(captioned_grid(result.images, labels)))
  assert [r["prompt"] for r in records] == [p for p in PROMPTS for _ in range(2)]
  # A sampled expansion depends on the seed and its own prompt only, not on the other prompts of
  # the call or their order (beam search: tests/sample/test_cli.py).
  sampled = CaptionExpander(expander.generator, do_sample=True, temperature=3.0,
                            max_new_tokens=12, seed=1)
  pair = sampled(PROMPTS)
  assert sampled([PROMPTS[1]]) == [pair[1]]
  reordered = sampled([PROMPTS[1], "a third prompt", PROMPTS[0]])
  assert [reordered[0], reordered[2]] == [pair[1], pair[0]]
  reseeded = CaptionExpander(expander.generator, do_sample=True, temperature=3.0,
                             max_new_tokens=12, seed=2)(PROMPTS)
  assert reseeded != pair
  # So samples.jsonl records a sampled expansion's seed (a Sampler.sample seed is not the
  # expander's); greedy and beam expansion have none.
  assert (sampled.settings()["seed"], "seed" in expander.settings()) == (1, False)
  # A template without {prompt} or sampling with beams is refused.
  with pytest.raises(ValueError, match=r"^Caption expansion samples \(do_sample\) or "
                     r"beam-searches \(num_beams > 1\), not both; drop one of the two options\.$"):
    CaptionExpander(expander.generator, do_sample=True, num_beams=2)  # its fields, not flags
  with pytest.raises(ValueError, match="no {prompt} placeholder"):
    CaptionExpander(expander.generator, template="Describe an image")
  with pytest.raises(ValueError, match=r"has the field\(s\) \['prompt\[0\]'\]; the only field"):
    CaptionExpander(expander.generator, template="Describe {prompt[0]}")  # would drop the rest
  assert CaptionExpander(expander.generator, template="Describe {prompt!r}").template
  length = expander.generator.tokenizer.max_length  # text before {prompt} filling the input
  with pytest.raises(ValueError, match=(
      rf"^The expander's template reads {length + 1} tokens before {{prompt}}, and its "
      rf"max_length={length} keeps {length - 1} \(and EOS\): no prompt would be read\. Raise "
      r"max_length \(sample.py --expand_max_length\) or shorten the template\.$")):
    CaptionExpander(expander.generator, template="{{" * (length + 1) + "{prompt}")(PROMPTS)
  assert CaptionExpander(expander.generator, template="{{" * (length - 2) + "{prompt}",
                         max_new_tokens=2)(PROMPTS)  # room for one token of the prompt
  for temperature in (0.0, float("inf")):  # inf: uniform random bytes, Infinity in samples.jsonl
    with pytest.raises(ValueError, match=(
        r"^Sampled expansion needs temperature from 1e-06 to 3\.4e\+38 \(lower is greedy\) and "
        rf"0 < top_p <= 1; got {temperature} and 1\.0\.$")):
      CaptionExpander(expander.generator, do_sample=True, temperature=temperature)  # its fields
  with pytest.raises(ValueError, match="batch_size=0 must be >= 1"):
    CaptionExpander(expander.generator, batch_size=0)


def test_expansion_sampling_options_without_sampling_are_refused():
  """temperature and top_p were ignored by greedy and beam-search expansion. sample.py's error
  names its flags, CaptionExpander's its fields (it named sample.py's flags)."""
  with pytest.raises(ValueError, match=r"^--expand_top_p=0.5 only applies when sampling "
                     "expansions; pass --expand_do_sample, or drop it for greedy"):
    check_options(DEFAULT_TEMPLATE, 8, 2, False, 1.0, 0.5, flag="--expand_")
  with pytest.raises(ValueError, match=r"^temperature=0.7, top_p=0.5 only apply when sampling "
                     r"expansions; pass do_sample=True, or drop them for greedy or beam-search "
                     r"expansion\.$"):
    check_options(DEFAULT_TEMPLATE, 8, 2, False, 0.7, 0.5)  # as CaptionExpander calls it
  check_options(DEFAULT_TEMPLATE, 8, 2, False, 1.0, 1.0)  # the defaults, given or not
  check_options(DEFAULT_TEMPLATE, 8, 1, True, 0.7, 0.5)


def test_expansion_input_cut_short_is_named_by_prompt(expander_dir, caplog):
  expander = CaptionExpander.from_pretrained(expander_dir, max_length=24, template="{prompt}",
                                             max_new_tokens=1, batch_size=1)
  long = "a big red circle to the left of a small blue square"  # 51 bytes + EOS
  with caplog.at_level(logging.WARNING):
    expander(["a red circle", "a star", long])
  assert ("first 24 tokens of template + prompt: 1 of 3 prompts are cut short (prompt #3 has 52 "
          "tokens); raise its max_length (sample.py --expand_max_length).") in caplog.text
  # One warning, by prompt: not the tokenizer's again per chunk (with chunk-local indices).
  assert caplog.text.count("cut short") == 1 and "is cut to max_length" not in caplog.text


def test_an_empty_expansion_falls_back_to_the_prompt(caplog):
  def tokenize(texts):
    return {"input_ids": np.zeros((len(texts), 4), np.int32)}, [4] * len(texts)
  for empty in ("", " \n"):
    generator = types.SimpleNamespace(
        tokenizer=types.SimpleNamespace(max_length=64, tokenize=tokenize),
        generate_tokens=lambda tokens, seed, empty=empty, **kw: [empty, "x"])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      assert CaptionExpander(generator)(PROMPTS) == [PROMPTS[0], "x"]
    assert f"empty caption for {PROMPTS[0]!r}; using the prompt itself" in caplog.text
    assert PROMPTS[1] not in caplog.text


@pytest.mark.parametrize("template", ["{prompt:d}", "{prompt!x}", "Describe {prompt:,}"])
def test_a_template_that_cannot_format_a_prompt_is_refused_before_the_model_loads(template):
  """check_template passed these (the field is `prompt`), so sample.py loaded the run and the
  expander and then failed with str.format's "Unknown format code 'd' ...", naming nothing."""
  with pytest.raises(ValueError, match=re.escape(f"Expansion template {template!r} cannot "
                                                 "format a prompt")):
    check_options(template, 8, 1, False, 1.0, 1.0)
  check_options("{prompt!r}: {prompt:>20}", 8, 1, False, 1.0, 1.0)  # conversions, specs that work


def test_a_prompt_cut_to_the_run_s_max_length_is_to_be_shortened(sampler, caplog):
  """The tokenizer's advice, to raise max_length, is no fix for a trained run: its text encoder
  was trained on config.text.max_length tokens, which its tokenizer reads. Shorten the prompt
  (or, expanded, the caption)."""
  with caplog.at_level(logging.WARNING):
    sampler(["a cat", "a red circle " * 3], num_per_prompt=1)
  assert [r.getMessage() for r in caplog.records] == [
      "Text #2 of 2 ('a red circle a red circle a re...', 40 tokens) is cut to max_length=32 "
      "tokens: the run's text encoder was trained on config.text.max_length=32 tokens and reads "
      "no more: shorten such prompts to keep them whole."]


class _BrightExpander(CaptionExpander):
  """A CaptionExpander whose captions are the prompts 'drawn in bright colours' (no model)."""

  def __call__(self, prompts):
    return [f"{p}, drawn in bright colours" for p in prompts]


@pytest.mark.parametrize("expander, fix", [
    # A caller's own expander: sample.py's flag sets nothing of it (it named it all the same).
    (lambda prompts: [f"{p}, drawn in bright colours" for p in prompts], "."),
    (_BrightExpander(types.SimpleNamespace()),
     " (fewer max_new_tokens: sample.py --expand_max_new_tokens)."),
], ids=["own_expander", "CaptionExpander"])
def test_an_expanded_caption_cut_to_the_run_s_max_length_names_the_expander_s_fix(
    sampler, caplog, monkeypatch, expander, fix):
  monkeypatch.setattr(sampler, "expander", expander)
  with caplog.at_level(logging.WARNING):
    sampler(["a cat", "a red circle"], num_per_prompt=1)
  assert [r.getMessage() for r in caplog.records] == [
      "Text #2 of 2 ('a red circle, drawn in bright ...', 38 tokens) is cut to max_length=32 "
      "tokens: the run's text encoder was trained on config.text.max_length=32 tokens and reads "
      f"no more: shorten the expander's captions to keep them whole{fix}"]
