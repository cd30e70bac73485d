"""What a captioned_shapes caption states, parsed back with shapes.py's vocabulary.

Captions state every object's shape and colour, but only some sizes (a size word is optional),
cells (some templates give none, or only a relation between the first two objects) and relations.
`parse_caption` returns exactly those statements, so scoring checks what the caption says and
nothing it leaves open; `tests/eval/test_captions.py` checks the parse against the structured
ground truth of every caption template.
"""
from __future__ import annotations

import dataclasses
import functools
import re

from llmimg_jax.data import shapes

# Relations between the first and second object (shapes._relation): (axis, sign of the first's
# index on it minus the second's).
RELATIONS = {"to the left of": ("col", -1), "left of": ("col", -1),
             "to the right of": ("col", 1), "right of": ("col", 1),
             "above": ("row", -1), "over": ("row", -1), "below": ("row", 1), "under": ("row", 1)}


@dataclasses.dataclass(frozen=True)
class StatedObject:
  shape: int  # index into shapes.SHAPES
  color: int  # index into shapes.COLORS
  size: int | None  # index into shapes.SIZES, None when the caption gives no size
  cell: int | None  # 3 * row + col, None when the caption gives no cell


@dataclasses.dataclass(frozen=True)
class Relation:
  first: int  # object indices into Claims.objects
  second: int
  axis: str  # 'row' or 'col'
  sign: int  # -1: first is above / left of second; +1: below / right of

  def holds(self, cell_first: int, cell_second: int) -> bool:
    (r1, c1), (r2, c2) = divmod(cell_first, 3), divmod(cell_second, 3)
    d = (c1 - c2) if self.axis == "col" else (r1 - r2)
    return d * self.sign > 0


@dataclasses.dataclass(frozen=True)
class Claims:
  objects: tuple[StatedObject, ...]
  relations: tuple[Relation, ...] = ()


def _alternation(words) -> str:
  return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def _inverse(synonyms: dict[str, tuple[str, ...]], names: tuple[str, ...]) -> dict[str, int]:
  return {word: names.index(name) for name, words in synonyms.items() for word in words}


_SHAPE_WORDS = _inverse(shapes.SHAPE_SYNONYMS, shapes.SHAPES)
_COLOR_WORDS = _inverse(shapes.COLOR_SYNONYMS, shapes.COLORS)
_SIZE_WORDS = _inverse(shapes.SIZE_SYNONYMS, shapes.SIZES)
_CELL_WORDS = {p: c for c, phrases in shapes.CELL_PHRASES.items() for p in phrases}
_SHORT_WORDS = {f"{s}:": c for c, s in enumerate(shapes.CELL_SHORT)}


@functools.lru_cache(maxsize=None)
def _token_re() -> re.Pattern:
  obj = (rf"(?:(?P<size>{_alternation(_SIZE_WORDS)})\s+)?(?P<color>{_alternation(_COLOR_WORDS)})"
         rf"\s+(?P<shape>{_alternation(_SHAPE_WORDS)})(?![\w-])")
  return re.compile(
      rf"(?<![\w-])(?:(?P<short>{_alternation(_SHORT_WORDS)})|(?P<cell>{_alternation(_CELL_WORDS)})"
      rf"(?![\w-])|(?P<rel>{_alternation(RELATIONS)})(?![\w-])|{obj})")


class CaptionParseError(ValueError):
  pass


def parse_caption(caption: str) -> Claims:
  """The objects and relations `caption` states; CaptionParseError if it names no object or a
  place that belongs to no object."""
  objects: list[dict] = []
  relations: list[Relation] = []
  pending_cell: int | None = None  # a cell phrase before its object ('top-left: ...', 'w, a p')
  pending_rel: tuple[str, int] | None = None
  for m in _token_re().finditer(caption.lower()):
    if m.group("short"):
      pending_cell = _SHORT_WORDS[m.group("short")]
    elif m.group("cell"):
      cell = _CELL_WORDS[m.group("cell")]
      if objects and objects[-1]["cell"] is None and pending_rel is None:
        objects[-1]["cell"] = cell
      else:
        pending_cell = cell
    elif m.group("rel"):
      if not objects:
        raise CaptionParseError(f"Relation {m.group('rel')!r} before any object in {caption!r}.")
      pending_rel = RELATIONS[m.group("rel")]
    else:
      size = m.group("size")
      objects.append({"shape": _SHAPE_WORDS[m.group("shape")],
                      "color": _COLOR_WORDS[m.group("color")],
                      "size": None if size is None else _SIZE_WORDS[size], "cell": pending_cell})
      pending_cell = None
      if pending_rel is not None:
        axis, sign = pending_rel
        relations.append(Relation(len(objects) - 2, len(objects) - 1, axis, sign))
        pending_rel = None
  if not objects:  # the colour-only variant ('something red', 'the colour red'): one blob
    colors = re.findall(rf"(?<![\w-])({_alternation(_COLOR_WORDS)})(?![\w-])", caption.lower())
    if len(colors) == 1:
      return Claims((StatedObject(shapes.SHAPES.index("blob"), _COLOR_WORDS[colors[0]], None,
                                  None),))
    raise CaptionParseError(f"No '[size] colour shape' object found in {caption!r}.")
  if pending_cell is not None or pending_rel is not None:
    raise CaptionParseError(f"A place or relation at the end of {caption!r} names no object.")
  return Claims(tuple(StatedObject(**o) for o in objects), tuple(relations))
