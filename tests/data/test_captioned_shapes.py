"""captioned_shapes: determinism, holdout pairs, and captions that agree with the ground truth."""
from __future__ import annotations

import colorsys
import hashlib
import itertools
import re
import subprocess
import sys

import numpy as np
import pytest

from llmimg_jax.data import captioned_shapes, flip, pipeline, prepare, shapes
from tests.data.utils import ReaderGone


def _pattern(words) -> re.Pattern:
  alternatives = sorted(words, key=len, reverse=True)  # longest first: "five-pointed star"
  return re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, alternatives)) + r")(?![\w-])")


_COLOR_OF = {w: c for c, ws in shapes.COLOR_SYNONYMS.items() for w in ws}
_SHAPE_OF = {w: s for s, ws in shapes.SHAPE_SYNONYMS.items() if s != "blob" for w in ws}
_SIZE_OF = {w: s for s, ws in shapes.SIZE_SYNONYMS.items() for w in ws}
_COLOR_RE, _SHAPE_RE, _SIZE_RE = _pattern(_COLOR_OF), _pattern(_SHAPE_OF), _pattern(_SIZE_OF)


def _changed(image: np.ndarray, background: np.ndarray) -> int:
  """How many pixels of `image` differ from `background`."""
  return int(np.any(image != background, axis=-1).sum())


def _mentions(caption: str):
  return ({_COLOR_OF[m] for m in _COLOR_RE.findall(caption)},
          {_SHAPE_OF[m] for m in _SHAPE_RE.findall(caption)},
          {_SIZE_OF[m] for m in _SIZE_RE.findall(caption)})


def _examples(cfg, split):
  source = pipeline.load_source(cfg, split)._source  # raw TFDS records, ground truth included
  return [source[i] for i in range(len(source))]


def test_vocabulary_sizes():
  assert len(shapes.SCENE_SHAPES) >= 6 and len(shapes.COLORS) >= 8 and len(shapes.SIZES) == 2
  assert len(set(shapes.HOLDOUT_PAIRS)) >= 6
  # Every shape and colour still occurs in train with other partners.
  train = shapes.allowed_pairs("train")
  assert {s for s, _ in train} == {shapes.SHAPES.index(s) for s in shapes.SCENE_SHAPES}
  assert {c for _, c in train} == set(range(len(shapes.COLORS)))


def test_render_is_deterministic_per_example():
  spec = shapes.SceneSpec(resolution=32, seed=3)
  a, b = shapes.render_example(spec, "train", 7), shapes.render_example(spec, "train", 7)
  np.testing.assert_array_equal(a["image"], b["image"])
  assert a["captions"] == b["captions"]
  c = shapes.render_example(spec, "train", 8)
  d = shapes.render_example(shapes.SceneSpec(resolution=32, seed=4), "train", 7)
  assert not np.array_equal(a["image"], c["image"]) and not np.array_equal(a["image"], d["image"])
  assert a["image"].dtype == np.uint8 and a["image"].shape == (32, 32, 3)


def test_build_splits_and_sizes(shapes_cfg):
  for split, n in (("train", 256), ("test", 64), ("holdout", 64)):
    assert len(pipeline.load_source(shapes_cfg, split)) == n
  # Generation indices cover the split exactly once.
  assert sorted(int(e["index"]) for e in _examples(shapes_cfg, "test")) == list(range(64))


def test_holdout_pairs_never_in_train_or_test(shapes_cfg):
  holdout = {(shapes.SHAPES.index(s), shapes.COLORS.index(c)) for s, c in shapes.HOLDOUT_PAIRS}
  for split in ("train", "test", "holdout"):
    pairs = set()
    for e in _examples(shapes_cfg, split):
      n = int(e["num_objects"])
      assert 1 <= n <= 3 and (e["shape"][n:] == -1).all() and (e["color"][n:] == -1).all()
      pairs |= {(int(s), int(c)) for s, c in zip(e["shape"][:n], e["color"][:n])}
    if split == "holdout":
      assert pairs <= holdout and len(pairs) >= 6
    else:
      assert not pairs & holdout, (split, pairs & holdout)
  # Also over many sampled scenes (cheap: no rendering).
  for i in range(3000):
    gt = shapes.sample_scene(np.random.default_rng([0, 0, i]), "train", colors_only=False)
    n = int(gt["num_objects"])
    assert not {(int(s), int(c)) for s, c in zip(gt["shape"][:n], gt["color"][:n])} & holdout


def test_captions_agree_with_ground_truth(shapes_cfg):
  for split in ("train", "holdout"):
    for e in _examples(shapes_cfg, split):
      n = int(e["num_objects"])
      colors = {shapes.COLORS[c] for c in e["color"][:n]}
      kinds = {shapes.SHAPES[s] for s in e["shape"][:n]}
      sizes = {shapes.SIZES[z] for z in e["size"][:n]}
      assert len(e["captions"]) == 3
      for caption in (c.decode() for c in e["captions"]):
        mentioned_colors, mentioned_shapes, mentioned_sizes = _mentions(caption)
        assert mentioned_colors == colors, caption
        assert mentioned_shapes == kinds, caption
        assert mentioned_sizes <= sizes, caption
        if n == 1:  # 'left'/'right' only name the column (so a flip can swap them)
          row, col = divmod(int(e["cell"][0]), 3)
          assert ("left" in caption) == (col == 0) and ("right" in caption) == (col == 2), caption
          words = set(re.findall(r"[a-z]+", caption))
          assert bool(words & {"top", "upper"}) == (row == 0), caption
          assert bool(words & {"bottom", "lower"}) == (row == 2), caption


# What each colour word means, written out here rather than read from shapes.COLOR_SYNONYMS (which
# the captions and the caption parser share, so a swap there would pass every other test).
_COLOR_WORDS = {
    "red": "red", "crimson": "red", "scarlet": "red", "orange": "orange", "tangerine": "orange",
    "yellow": "yellow", "golden": "yellow", "lemon": "yellow", "green": "green",
    "emerald": "green", "cyan": "cyan", "turquoise": "cyan", "aqua": "cyan", "blue": "blue",
    "azure": "blue", "cobalt": "blue", "purple": "purple", "violet": "purple", "pink": "pink",
    "rose": "pink", "white": "white", "snow-white": "white", "ivory": "white", "black": "black",
    "jet-black": "black", "ebony": "black"}


def test_colour_words_name_the_colours_drawn():
  assert {w: c for c, words in shapes.COLOR_SYNONYMS.items() for w in words} == _COLOR_WORDS
  hue = {c: colorsys.rgb_to_hsv(*(v / 255 for v in rgb)) for c, rgb in shapes.RGB.items()}
  assert hue["red"][0] < hue["orange"][0] < hue["yellow"][0] < hue["green"][0] < hue["cyan"][0] \
      < hue["blue"][0] < hue["purple"][0] < hue["pink"][0]  # round the colour wheel
  assert hue["white"][2] > 0.9 > 0.1 > hue["black"][2] and hue["white"][1] < 0.1


def test_large_objects_cover_more_pixels_than_small_ones(shapes_cfg):
  """Pixels of each single object's colour, by its stated size."""
  area = {"small": [], "large": []}
  for e in _examples(shapes_cfg, "train"):
    if int(e["num_objects"]) != 1:
      continue
    rgb = np.array(shapes.RGB[shapes.COLORS[e["color"][0]]], np.int32)
    close = (np.abs(e["image"].astype(np.int32) - rgb).sum(-1) < 60).mean()
    area[shapes.SIZES[e["size"][0]]].append(close)
  assert min(map(len, area.values())) >= 3, {k: len(v) for k, v in area.items()}
  assert np.median(area["large"]) > 2 * np.median(area["small"]), area


def test_pixels_agree_with_ground_truth(shapes_cfg):
  """The centre of each large object's cell has (nearly) the object's colour."""
  palette = np.array([shapes.RGB[c] for c in shapes.COLORS], np.float32)
  checked = 0
  for e in _examples(shapes_cfg, "train"):
    r = e["image"].shape[0]
    for i in range(int(e["num_objects"])):
      if e["size"][i] != shapes.SIZES.index("large"):
        continue
      row, col = divmod(int(e["cell"][i]), 3)
      pixel = e["image"][int((row + 0.5) * r / 3), int((col + 0.5) * r / 3)].astype(np.float32)
      assert np.argmin(((palette - pixel) ** 2).sum(-1)) == e["color"][i]
      checked += 1
  assert checked > 50


def test_spatial_relation_words_match_cells():
  rng = np.random.default_rng(0)
  # pylint: disable=protected-access
  assert shapes._relation(0, 2, rng) in ("left of", "to the left of")
  assert shapes._relation(7, 1, rng) in ("below", "under")


def test_colors_only_variant(tmp_path):
  cfg = captioned_shapes.ShapesConfig(name="colors_test", resolution=32, num_train=48,
                                      num_test=0, num_holdout=0, colors_only=True)
  builder = captioned_shapes.CaptionedShapes(config=cfg, data_dir=str(tmp_path), num_proc=1)
  builder.download_and_prepare()
  assert list(builder.info.splits.keys()) == ["train"]
  source = builder.as_data_source("train")
  seen = set()
  for i in range(len(source)):
    e = source[i]
    assert int(e["num_objects"]) == 1 and shapes.SHAPES[e["shape"][0]] == "blob"
    color = shapes.COLORS[e["color"][0]]
    assert color in shapes.COLORS_ONLY
    seen.add(color)
    for caption in (c.decode() for c in e["captions"]):
      mentioned_colors, mentioned_shapes, _ = _mentions(caption)
      assert mentioned_colors == {color} and not mentioned_shapes, caption
  assert len(seen) >= 6


def test_predefined_configs():
  names = {c.name: c for c in captioned_shapes.BUILDER_CONFIGS}
  for name in ("32", "64", "128"):
    assert names[name].resolution == int(name) and names[name].num_train == 50_000
  assert names["32_small"].num_train == names["64_small"].num_train == 2_000
  assert names["colors_32"].colors_only and names["colors_32"].num_holdout == 0


def test_single_object_variant():
  """single_32 (the quick config's data before center_32): one shape per image, drawn 1.5x
  larger, with a caption naming that shape; the default configs' images are unchanged by the new
  options."""
  cfg = {c.name: c for c in captioned_shapes.BUILDER_CONFIGS}["single_32"]
  assert cfg.max_objects == 1 and cfg.object_scale == 1.5 and cfg.num_train == 50_000
  single = shapes.SceneSpec(32, max_objects=1, object_scale=1.5)
  plain = shapes.SceneSpec(32, max_objects=1)
  larger = 0
  for i in range(40):
    e = shapes.render_example(single, "train", i)
    assert int(e["num_objects"]) == 1 and e["shape"][1] == -1
    for caption in e["captions"]:
      _, mentioned_shapes, _ = _mentions(caption)
      assert mentioned_shapes == {shapes.SHAPES[e["shape"][0]]}, caption
    small = shapes.render_example(plain, "train", i)["image"]
    # Same scene, same background: the 1.5x object changes more pixels than the 1x one.
    background = shapes.render_example(shapes.SceneSpec(32, max_objects=1, object_scale=0.0),
                                       "train", i)["image"]
    larger += _changed(e["image"], background) > _changed(small, background)
  assert larger >= 38
  center = {c.name: c for c in captioned_shapes.BUILDER_CONFIGS}["center_32"]
  assert center.cells == (4,) and center.object_scale == 2.0 and center.max_objects == 1
  for i in range(40):
    e = shapes.render_example(shapes.SceneSpec(32, max_objects=1, object_scale=2.0, cells=(4,)),
                              "test", i)
    assert e["cell"][0] == 4 and e["cell"][1] == -1
  # Dataset version 1.0.0's examples (hash recorded before the single-object options existed).
  default = shapes.render_example(shapes.SceneSpec(32), "train", 3)
  assert hashlib.sha256(default["image"].tobytes()).hexdigest()[:16] == "99f3c58435d7a4d2"
  assert default["captions"][0] == ("an ivory hexagon right of a tiny black box, plus a golden "
                                    "cross at the top")


@pytest.mark.parametrize("config_name", ["shapes_quick", "shapes_64"])
def test_experiment_configs_fit_their_datasets_longest_captions(config_name):
  """Captions of 20k scenes drawn as the config's dataset draws them (nothing rendered): the
  longest ones, tokenized with the config's tokenizer plus EOS, fit text.max_length."""
  import importlib
  from llmimg_jax.text.tokenizer import load_tokenizer
  cfg = importlib.import_module(f"configs.{config_name}").get_config()
  spec = {c.name: c for c in captioned_shapes.BUILDER_CONFIGS}[cfg.data.config]
  rng = np.random.default_rng(0)
  captions = set()
  for i in range(20_000):
    gt = shapes.sample_scene(rng, ("train", "test", "holdout")[i % 3], spec.colors_only,
                             spec.max_objects, spec.cells)
    captions.update(shapes.caption_scene(gt, rng) for _ in range(3))
  if cfg.data.random_flip:  # the pipeline swaps 'left' and 'right' in a flipped image's caption
    captions |= {flip.swap_left_right(c) for c in captions}
  longest = sorted(captions, key=len)[-20:]
  hf = load_tokenizer(None, cfg.text.max_length).hf
  lengths = [len(ids) for ids in hf(longest, add_special_tokens=True)["input_ids"]]
  assert max(lengths) <= cfg.text.max_length, (max(lengths), longest[-1])


_BUILD_SCRIPT = """
import hashlib, sys
from llmimg_jax.data import captioned_shapes, pipeline
captioned_shapes._MIN_PARALLEL = 0  # tiny_32's 384 images built by 2 spawned workers
cfg = pipeline.default_data_config()
cfg.config, cfg.data_dir, cfg.build_num_proc = "tiny_32", sys.argv[1], 2
def digest():
  source = pipeline.load_source(cfg, "test")
  return hashlib.sha1(b"".join(source[i]["image"].tobytes() for i in range(len(source))))
{body}
"""


@pytest.mark.parametrize("guarded", [True, False])
def test_parallel_build_equals_the_sequential_one(shapes_cfg, tmp_path, guarded):
  """Spawned build workers rerun the calling script: without `if __name__ == "__main__":` they
  die, and the build finishes in the calling process (it used to respawn them forever)."""
  body = "print(digest().hexdigest())"
  script = _BUILD_SCRIPT.format(
      body=f"if __name__ == '__main__':\n  {body}" if guarded else body)
  (tmp_path / "build.py").write_text(script)
  run = subprocess.run([sys.executable, str(tmp_path / "build.py"), str(tmp_path / "tfds")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert run.returncode == 0, run.stderr[-3000:]
  source = pipeline.load_source(shapes_cfg, "test")
  expected = hashlib.sha1(b"".join(source[i]["image"].tobytes() for i in range(len(source))))
  assert run.stdout.split()[-1] == expected.hexdigest()
  assert ("worker processes died" in run.stderr) != guarded, run.stderr[-3000:]


def test_a_worker_error_reaches_the_caller(tmp_path):
  cfg = captioned_shapes.CaptionedShapes.builder_configs["tiny_32"]
  tasks = [(cfg, "test", 0, 4, str(tmp_path / "missing_dir" / f"shard{k}")) for k in range(2)]
  with pytest.raises(RuntimeError, match="open.. failed: No such file or directory; opening "
                     + re.escape(f"{tmp_path}/missing_dir/shard")) as raised:  # the writer's
    list(captioned_shapes._write_shards_in_processes(tasks, 2))
  # raised in a worker: the pool attaches its traceback there as the cause
  assert type(raised.value.__cause__).__name__ == "_RemoteTraceback", raised.value.__cause__


def test_test_and_holdout_images_are_not_train_images(shapes_cfg):
  """Each split draws its own scenes (seeded by split): none repeats a train image."""
  digest = lambda e: hashlib.sha256(e["image"].tobytes()).hexdigest()  # noqa: E731
  train = {digest(e) for e in _examples(shapes_cfg, "train")}
  for split in ("test", "holdout"):
    assert not {digest(e) for e in _examples(shapes_cfg, split)} & train, split
  # Dataset version 1.0.0's test split (as the train pin in test_single_object_variant).
  e = shapes.render_example(shapes.SceneSpec(32), "test", 3)
  assert hashlib.sha256(e["image"].tobytes()).hexdigest()[:16] == "f4a303c037d0377b"
  assert e["captions"][0] == "top: little tangerine disc"


_RELATIONS = {"left of": ("col", -1), "right of": ("col", 1), "above": ("row", -1),
              "over": ("row", -1), "below": ("row", 1), "under": ("row", 1)}


def test_relation_words_say_where_the_first_object_is_relative_to_the_second():
  """'a X left of a Y' (and 'to the left of', above/over, below/under): X is objects[0]."""
  rng = np.random.default_rng(0)
  seen = set()
  for _ in range(3000):
    gt = shapes.sample_scene(rng, "train", colors_only=False)
    caption = shapes.caption_scene(gt, rng)
    found = re.findall(r" (left of|right of|above|over|below|under) an? ", caption)
    if not found:
      continue
    assert len(found) == 1 and int(gt["num_objects"]) >= 2, caption
    (r0, c0), (r1, c1) = divmod(int(gt["cell"][0]), 3), divmod(int(gt["cell"][1]), 3)
    axis, sign = _RELATIONS[found[0]]
    assert np.sign(c0 - c1 if axis == "col" else r0 - r1) == sign, (caption, gt["cell"][:2])
    seen.add(found[0])
  assert seen == set(_RELATIONS)


def test_every_example_has_distinct_captions(shapes_cfg):
  """render_example draws until its num_captions (3) captions differ; tiny_32's templates allow."""
  for split in ("train", "test", "holdout"):
    for e in _examples(shapes_cfg, split):
      assert len(set(e["captions"])) == len(e["captions"]) == 3, e["captions"]


@pytest.mark.parametrize("spec", [dict(max_objects=3, cells=(4,)), dict(cells=(0, 1, 9)),
                                  dict(max_objects=0), dict(max_objects=2, cells=(4, 4)),
                                  dict(max_objects=2, cells=(3, 4, 4))])
def test_a_scene_spec_that_cannot_place_its_objects_is_refused(spec):
  """One object per cell: fewer cells than objects would index past the drawn cells."""
  with pytest.raises(ValueError, match=r"SceneSpec\.(cells|max_objects)="):
    shapes.SceneSpec(32, **spec)


def test_the_sequential_reference_path_yields_the_stored_records(shapes_cfg):
  """TFDS's generic path (_split_generators / _generate_examples) and the parallel shard writer
  that builds the dataset give the same records."""
  builder = pipeline.builder(shapes_cfg)
  splits = builder._split_generators(None)  # pylint: disable=protected-access
  assert set(splits) == {"train", "test", "holdout"}
  for split in ("test", "holdout"):
    source = pipeline.load_source(shapes_cfg, split)
    first = list(itertools.islice(splits[split], 3))
    assert [key for key, _ in first] == [0, 1, 2]
    for i, (_, example) in enumerate(first):
      assert example["captions"] == source[i]["captions"], (split, i)
      np.testing.assert_array_equal(example["image"], source[i]["image"])


def test_a_process_count_that_is_no_number_is_named(tmp_path, monkeypatch, capsys):
  """LLMIMG_DATA_NUM_PROC=auto failed with "invalid literal for int() with base 10: 'auto'",
  which named neither the variable nor the fix."""
  monkeypatch.setenv("LLMIMG_DATA_NUM_PROC", "auto")
  with pytest.raises(SystemExit) as exit_info:
    prepare.main(["--dataset", "captioned_shapes/tiny_32", "--data_dir", str(tmp_path)])
  assert exit_info.value.code == 2
  assert ("error: LLMIMG_DATA_NUM_PROC='auto' is not a whole number: set it to the number of "
          "processes that render captioned_shapes (1 = in this process), or unset it for the "
          "default.") in capsys.readouterr().err
  monkeypatch.setenv("LLMIMG_DATA_NUM_PROC", "3")
  assert captioned_shapes.default_num_proc() == 3


def test_a_build_whose_log_reader_is_gone_completes(tmp_path, monkeypatch):
  """The build's progress bar raised BrokenPipeError at its next draw, ending the build."""
  monkeypatch.setattr(sys, "stderr", ReaderGone())
  cfg = captioned_shapes.ShapesConfig(name="bar_test", resolution=32, num_train=16, num_test=0,
                                      num_holdout=0)
  builder = captioned_shapes.CaptionedShapes(config=cfg, data_dir=str(tmp_path), num_proc=1)
  builder.download_and_prepare()
  assert builder.info.splits["train"].num_examples == 16
