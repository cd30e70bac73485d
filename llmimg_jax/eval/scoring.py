"""Scores images against their captions from the evaluator's per-cell reading.

An image follows its caption when the evaluator sees exactly as many objects as the caption
states and the stated objects can be matched one-to-one to seen objects so that every stated
shape, colour, size, cell and relation holds. Per-attribute accuracies use the best such matching
(the one with the most statements true), each statement's credit averaged over the matchings tied
for best (a red circle and a blue square read as a blue circle and a red square: half credit for
shapes and colours, wherever the two stand); a stated object with no seen object to match counts
as wrong in every attribute.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmimg_jax.eval.captions import Claims

# Per-attribute accuracy keys: each is (statements true) / (statements made) over a set.
METRICS = ("shape", "color", "size", "cell", "relation", "count")


def _object_checks(obj, cell: int, pred: dict[str, np.ndarray], i: int) -> dict[str, int | None]:
  """1/0 for each stated attribute of `obj` placed in `cell` of image i; None if not stated."""
  seen = cell >= 0
  return {"shape": int(seen and pred["shape"][i, cell] == obj.shape),
          "color": int(seen and pred["color"][i, cell] == obj.color),
          "size": None if obj.size is None else int(seen and pred["size"][i, cell] == obj.size),
          "cell": None if obj.cell is None else int(seen and cell == obj.cell)}


def score_one(claims: Claims, pred: dict[str, np.ndarray], i: int) -> dict[str, Any]:
  """{'correct': bool, 'checks': {metric: [credit, ...]}} for image i of the per-cell `pred`: 1/0
  per statement, or its mean over the best matchings when several tie."""
  seen = [int(c) for c in np.flatnonzero(pred["present"][i])]
  n = len(claims.objects)
  # Every injective placement of the stated objects on seen cells; -1 = no seen object left.
  slots = seen + [-1] * max(0, n - len(seen))
  tied: list[dict[str, list[int]]] = []
  best_total = -1
  for placement in set(itertools.permutations(slots, n)):
    checks: dict[str, list[int]] = {m: [] for m in METRICS}
    for obj, cell in zip(claims.objects, placement):
      for k, v in _object_checks(obj, cell, pred, i).items():
        if v is not None:
          checks[k].append(v)
    for rel in claims.relations:
      a, b = placement[rel.first], placement[rel.second]
      checks["relation"].append(int(a >= 0 and b >= 0 and rel.holds(a, b)))
    total = sum(sum(v) for v in checks.values())
    if total > best_total:
      tied, best_total = [], total
    if total == best_total:
      tied.append(checks)
  # Credit split evenly among tied matchings: not given to whichever the set yields first.
  best: dict[str, list] = {m: [sum(col) / len(tied) for col in zip(*(t[m] for t in tied))]
                           for m in METRICS}
  best["count"] = [int(len(seen) == n)]
  correct = all(all(x == 1 for x in v) for v in best.values())
  return {"correct": correct, "checks": best}


def score(claims: Sequence[Claims], pred: dict[str, np.ndarray]) -> dict[str, float]:
  """Caption accuracy (fraction of images following their caption in everything it states) and
  per-attribute accuracies over a batch; pred from `ShapesEvaluator.read` ([n, 9] arrays). NaN
  where nothing was measured: an attribute no caption states, and every accuracy of no images."""
  correct, totals = [], {m: [0, 0] for m in METRICS}
  for i, c in enumerate(claims):
    s = score_one(c, pred, i)
    correct.append(s["correct"])
    for m, v in s["checks"].items():
      totals[m][0] += sum(v)
      totals[m][1] += len(v)
  out = {"caption_accuracy": float(np.mean(correct)) if correct else float("nan"),
         "num_images": len(correct)}
  out.update({m: (t / n if n else float("nan")) for m, (t, n) in totals.items()})
  return out
