"""The caption parser recovers exactly what each caption template states, and scoring checks it."""
import numpy as np
import pytest

from llmimg_jax.data import shapes
from llmimg_jax.eval.captions import CaptionParseError, parse_caption
from llmimg_jax.eval.scoring import score, score_one


def _scenes(n: int, split: str = "train"):
  for i in range(n):
    rng = np.random.default_rng([7, i])
    gt = shapes.sample_scene(rng, split, colors_only=False)
    yield gt, shapes.caption_scene(gt, rng)


def test_parse_agrees_with_ground_truth_for_every_template():
  stated = {"size": 0, "cell": 0, "relation": 0, "objects": 0}
  for gt, caption in _scenes(3000):
    claims = parse_caption(caption)
    n = int(gt["num_objects"])
    assert len(claims.objects) == n, caption
    for i, obj in enumerate(claims.objects):
      assert (obj.shape, obj.color) == (gt["shape"][i], gt["color"][i]), caption
      assert obj.size in (None, gt["size"][i]), caption
      assert obj.cell in (None, gt["cell"][i]), caption
      stated["size"] += obj.size is not None
      stated["cell"] += obj.cell is not None
    for rel in claims.relations:
      assert (rel.first, rel.second) == (0, 1), caption
      assert rel.holds(gt["cell"][0], gt["cell"][1]), caption
    stated["relation"] += len(claims.relations)
    stated["objects"] += n
  # Every kind of statement occurs, and some are left open (the caption does not say them).
  assert 0.7 < stated["size"] / stated["objects"] < 0.9  # a size word 80% of the time
  assert 0.4 < stated["cell"] / stated["objects"] < 0.95
  assert stated["relation"] > 300


def test_parse_examples():
  c = parse_caption("a tiny crimson disc to the left of a big ebony six-sided shape")
  assert [(o.shape, o.color, o.size, o.cell) for o in c.objects] == [
      (0, 0, 0, None), (5, 9, 1, None)]
  assert len(c.relations) == 1 and c.relations[0].axis == "col" and c.relations[0].sign == -1
  c = parse_caption("top-left: lemon star; bottom-right: small snow-white plus sign")
  assert [(o.shape, o.color, o.size, o.cell) for o in c.objects] == [
      (3, 2, None, 0), (6, 8, 0, 8)]
  c = parse_caption("in the middle left, a violet box")
  assert [(o.shape, o.color, o.cell) for o in c.objects] == [(1, 6, 3)]
  with pytest.raises(CaptionParseError, match="No"):
    parse_caption("a photo of a dog")


def _pred(cells: dict[int, tuple[int, int, int]]):
  """Per-cell reading of one image from {cell: (shape, colour, size)}."""
  p = {k: np.zeros((1, 9), np.int32) for k in ("shape", "color", "size")}
  p["present"] = np.zeros((1, 9), bool)
  for cell, (s, c, z) in cells.items():
    p["present"][0, cell] = True
    p["shape"][0, cell], p["color"][0, cell], p["size"][0, cell] = s, c, z
  return p


def test_score_checks_what_is_stated_and_no_extra_objects():
  claims = parse_caption("a red circle left of a blue square")  # no cells, no sizes
  assert score_one(claims, _pred({3: (0, 0, 1), 5: (1, 5, 0)}), 0)["correct"]
  assert score_one(claims, _pred({0: (0, 0, 0), 2: (1, 5, 1)}), 0)["correct"]
  wrong_side = score_one(claims, _pred({5: (0, 0, 1), 3: (1, 5, 0)}), 0)
  assert not wrong_side["correct"] and wrong_side["checks"]["relation"] == [0]
  extra = score_one(claims, _pred({3: (0, 0, 1), 5: (1, 5, 0), 7: (2, 1, 0)}), 0)
  assert not extra["correct"] and extra["checks"]["count"] == [0]
  missing = score_one(claims, _pred({3: (0, 0, 1)}), 0)
  assert not missing["correct"] and missing["checks"]["shape"] == [1, 0]
  claims = parse_caption("a large green star in the center")
  assert score_one(claims, _pred({4: (3, 3, 1)}), 0)["correct"]
  small = score_one(claims, _pred({4: (3, 3, 0)}), 0)
  assert not small["correct"] and small["checks"]["size"] == [0]
  moved = score_one(claims, _pred({1: (3, 3, 1)}), 0)
  assert not moved["correct"] and moved["checks"]["cell"] == [0]
  assert moved["checks"]["shape"] == [1]
  # "left of" needs another column: one above the other (the same column) is not left of it.
  claims = parse_caption("a red circle left of a blue square")
  stacked = score_one(claims, _pred({1: (0, 0, 1), 7: (1, 5, 0)}), 0)
  assert not stacked["correct"] and stacked["checks"]["relation"] == [0]


def test_score_aggregates():
  claims = [parse_caption("a red circle in the center")] * 2
  pred = _pred({4: (0, 0, 0)})
  pred = {k: np.concatenate([v, np.zeros_like(v)]) for k, v in pred.items()}  # 2nd: empty
  s = score(claims, pred)
  assert s["caption_accuracy"] == 0.5 and s["shape"] == 0.5 and s["count"] == 0.5
  assert s["num_images"] == 2
  # Accuracies count statements, not images: 2 cell statements (1 true) + 1 (true) = 2/3.
  claims = [parse_caption("a red circle in the top left corner and a blue square in the center"),
            parse_caption("a red circle in the center")]
  pred = {k: np.concatenate([a, b]) for (k, a), b in zip(
      _pred({0: (0, 0, 0), 8: (1, 5, 0)}).items(), _pred({4: (0, 0, 0)}).values())}
  s = score(claims, pred)
  assert s["cell"] == pytest.approx(2 / 3) and s["caption_accuracy"] == 0.5


def test_colour_only_captions_state_one_blob_of_that_colour():
  for i in range(300):
    rng = np.random.default_rng([8, i])
    gt = shapes.sample_scene(rng, "train", colors_only=True)
    claims = parse_caption(shapes.caption_scene(gt, rng))
    (obj,) = claims.objects
    assert (obj.shape, obj.color, obj.cell) == (shapes.SHAPES.index("blob"), gt["color"][0], None)


def test_score_splits_tied_credit_whatever_the_cells():
  # A red circle and a blue square read as a blue circle and a red square: matching by shape or
  # by colour ties; each gets half credit wherever the two stand (it went by the set's order).
  claims = parse_caption("a red circle and a blue square")
  for a, b in [(0, 4), (4, 0), (1, 7), (7, 1), (2, 6), (6, 2)]:
    s = score_one(claims, _pred({a: (0, 5, 0), b: (1, 0, 0)}), 0)
    assert not s["correct"]
    assert s["checks"]["shape"] == [0.5, 0.5] and s["checks"]["color"] == [0.5, 0.5], (a, b)
  # Identical objects tie with every statement true: still correct.
  claims = parse_caption("a red circle and a red circle")
  assert score_one(claims, _pred({2: (0, 0, 0), 6: (0, 0, 1)}), 0)["correct"]
