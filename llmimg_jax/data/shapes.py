"""Procedural scenes of coloured shapes on a 3x3 grid, with varied English captions.

Pure numpy + PIL (no TensorFlow): `render_example(spec, split, index)` is a deterministic
function of its arguments (per-example seeding), so any worker order gives the same dataset.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross", "blob")
SCENE_SHAPES = SHAPES[:-1]  # "blob" is only used by the colour-only variant.
COLORS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white", "black")
COLORS_ONLY = COLORS[:8]  # 8 clearly distinct hues for the colour-only variant.
SIZES = ("small", "large")
MAX_OBJECTS = 3

RGB = {
    "red": (220, 30, 30), "orange": (250, 130, 10), "yellow": (250, 225, 20),
    "green": (30, 170, 50), "cyan": (20, 210, 220), "blue": (30, 60, 225),
    "purple": (140, 40, 190), "pink": (250, 120, 190), "white": (250, 250, 250),
    "black": (15, 15, 15),
}

COLOR_SYNONYMS = {
    "red": ("red", "crimson", "scarlet"), "orange": ("orange", "tangerine"),
    "yellow": ("yellow", "golden", "lemon"), "green": ("green", "emerald"),
    "cyan": ("cyan", "turquoise", "aqua"), "blue": ("blue", "azure", "cobalt"),
    "purple": ("purple", "violet"), "pink": ("pink", "rose"),
    "white": ("white", "snow-white", "ivory"), "black": ("black", "jet-black", "ebony"),
}
SHAPE_SYNONYMS = {
    "circle": ("circle", "disc", "round dot"), "square": ("square", "box"),
    "triangle": ("triangle", "three-sided shape"), "star": ("star", "five-pointed star"),
    "diamond": ("diamond", "rhombus", "lozenge"), "hexagon": ("hexagon", "six-sided shape"),
    "cross": ("cross", "plus sign"), "blob": ("blob", "shape", "splotch", "patch"),
}
SIZE_SYNONYMS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}

# Fixed (shape, colour) pairs that never occur in train/test; the holdout split has only these.
HOLDOUT_PAIRS = (
    ("circle", "green"), ("square", "pink"), ("triangle", "blue"), ("star", "red"),
    ("diamond", "yellow"), ("hexagon", "orange"), ("cross", "purple"), ("circle", "cyan"),
)

# Cell c = 3 * row + col. Long phrases follow "in the"/"at the"; short ones prefix captions.
CELL_PHRASES = {
    0: ("in the top left corner", "at the top left", "in the upper left"),
    1: ("at the top", "in the top middle", "at the top center"),
    2: ("in the top right corner", "at the top right", "in the upper right"),
    3: ("on the left", "in the middle left", "at the left side"),
    4: ("in the center", "in the middle", "in the very middle"),
    5: ("on the right", "in the middle right", "at the right side"),
    6: ("in the bottom left corner", "at the bottom left", "in the lower left"),
    7: ("at the bottom", "in the bottom middle", "at the bottom center"),
    8: ("in the bottom right corner", "at the bottom right", "in the lower right"),
}
CELL_SHORT = ("top-left", "top", "top-right", "left", "center", "right",
              "bottom-left", "bottom", "bottom-right")

SPLIT_IDS = {"train": 0, "test": 1, "holdout": 2}


@dataclasses.dataclass(frozen=True)
class SceneSpec:
  resolution: int
  colors_only: bool = False
  seed: int = 0
  supersample: int = 4
  max_objects: int = MAX_OBJECTS  # 1 for the single-object variant
  object_scale: float = 1.0  # radius multiplier (single large objects read better at 32px)
  cells: tuple[int, ...] | None = None  # the cells objects may occupy; None = all nine

  def __post_init__(self):
    if not 1 <= self.max_objects <= MAX_OBJECTS:
      raise ValueError(f"SceneSpec.max_objects={self.max_objects} must be in [1, {MAX_OBJECTS}].")
    if self.cells is not None and (len(self.cells) < self.max_objects or not set(self.cells)
                                   <= set(range(9)) or len(set(self.cells)) < len(self.cells)):
      raise ValueError(f"SceneSpec.cells={self.cells} must hold at least max_objects="
                       f"{self.max_objects} distinct cells of 0-8 (one object per cell).")


@functools.lru_cache(maxsize=None)
def allowed_pairs(split: str) -> tuple[tuple[int, int], ...]:
  """(shape_id, color_id) pairs an object of `split` may have."""
  holdout = {(SHAPES.index(s), COLORS.index(c)) for s, c in HOLDOUT_PAIRS}
  every = {(SHAPES.index(s), COLORS.index(c)) for s in SCENE_SHAPES for c in COLORS}
  return tuple(sorted(holdout if split == "holdout" else every - holdout))


def sample_scene(rng: np.random.Generator, split: str, colors_only: bool,
                 max_objects: int = MAX_OBJECTS, cells: tuple[int, ...] | None = None
                 ) -> dict[str, np.ndarray]:
  """Structured ground truth, padded with -1 to MAX_OBJECTS objects."""
  gt = {k: np.full((MAX_OBJECTS,), -1, np.int32) for k in ("shape", "color", "size", "cell")}
  if colors_only:
    n = 1
    gt["shape"][0] = SHAPES.index("blob")
    gt["color"][0] = rng.integers(len(COLORS_ONLY))
    gt["size"][0] = SIZES.index("large")
    gt["cell"][0] = 4
  else:
    n = int(rng.integers(1, max_objects + 1))
    pairs = allowed_pairs(split)
    cells = rng.permutation(9 if cells is None else np.asarray(cells))[:n]
    for i in range(n):
      s, c = pairs[rng.integers(len(pairs))]
      gt["shape"][i], gt["color"][i] = s, c
      gt["size"][i] = rng.integers(2)
      gt["cell"][i] = cells[i]
  gt["num_objects"] = np.int32(n)
  return gt


# ---------------------------------------------------------------------------------------------
# Rendering


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  """Low-contrast, desaturated background; uint8 [size, size, 3]."""
  base = rng.uniform(85, 185)
  tint = rng.normal(0, 7, size=3)  # slight colour cast, desaturated
  c0 = np.clip(base + tint, 0, 255)
  kind = rng.integers(3)
  if kind == 0:  # flat
    img = np.broadcast_to(c0, (size, size, 3)).astype(np.float32)
  elif kind == 1:  # linear gradient in a random direction
    c1 = np.clip(c0 + rng.normal(0, 25) + rng.normal(0, 5, size=3), 0, 255)
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    t = np.clip(0.5 + (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle), 0, 1)[..., None]
    img = c0 * (1 - t) + c1 * t
  else:  # smooth low-frequency noise: coarse grid upsampled
    coarse = c0 + rng.normal(0, 14, size=(4, 4, 1))
    img = np.asarray(Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8))
                     .resize((size, size), Image.BICUBIC), np.float32)
  return np.clip(img, 0, 255).astype(np.uint8)


def _polygon(cx: float, cy: float, r: float, n: int, rot: float, inner: float | None = None):
  pts = []
  k = 2 * n if inner else n
  for i in range(k):
    rr = r * inner if (inner and i % 2) else r
    a = rot + 2 * np.pi * i / k
    pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
  return pts


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill,
                rng: np.random.Generator) -> None:
  if shape == "circle":
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
  elif shape == "square":
    s = r * 0.85
    draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
  elif shape == "triangle":
    draw.polygon(_polygon(cx, cy + 0.15 * r, 1.1 * r, 3, -np.pi / 2), fill=fill)
  elif shape == "star":
    draw.polygon(_polygon(cx, cy, 1.1 * r, 5, -np.pi / 2, inner=0.45), fill=fill)
  elif shape == "diamond":
    draw.polygon([(cx, cy - 1.1 * r), (cx + 0.75 * r, cy), (cx, cy + 1.1 * r),
                  (cx - 0.75 * r, cy)], fill=fill)
  elif shape == "hexagon":
    draw.polygon(_polygon(cx, cy, r, 6, 0.0), fill=fill)
  elif shape == "cross":
    a, b = r, 0.33 * r
    draw.rectangle((cx - a, cy - b, cx + a, cy + b), fill=fill)
    draw.rectangle((cx - b, cy - a, cx + b, cy + a), fill=fill)
  elif shape == "blob":  # wobbly closed curve
    n = 48
    phase = rng.uniform(0, 2 * np.pi, size=3)
    amp = rng.uniform(0.05, 0.15, size=3)
    pts = []
    for i in range(n):
      a = 2 * np.pi * i / n
      rr = r * (1 + sum(amp[j] * math.sin((j + 2) * a + phase[j]) for j in range(3)))
      pts.append((cx + rr * math.cos(a), cy + 0.85 * rr * math.sin(a)))
    draw.polygon(pts, fill=fill)
  else:
    raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")


def render_scene(gt: dict[str, np.ndarray], rng: np.random.Generator, resolution: int,
                 supersample: int = 4, object_scale: float = 1.0) -> np.ndarray:
  """Anti-aliased rendering; uint8 [R, R, 3].

  The background is made at the output resolution and nearest-upscaled (so box-downsampling
  restores it exactly); shapes are drawn at `supersample`x on top and box-downsampled.
  """
  big = resolution * supersample
  background = Image.fromarray(_background(rng, resolution))  # [R, R, 3]
  canvas = background.resize((big, big), Image.NEAREST)
  draw = ImageDraw.Draw(canvas)
  cell = big / 3
  for i in range(int(gt["num_objects"])):
    shape, color = SHAPES[gt["shape"][i]], COLORS[gt["color"][i]]
    jitter = rng.uniform(-0.5, 0.5, size=2) * 0.08
    rgb = tuple(int(np.clip(v + rng.normal(0, 6), 0, 255)) for v in RGB[color])
    if shape == "blob":  # colour-only variant: one large blob anywhere near the middle
      r = big * rng.uniform(0.25, 0.34)
      cx, cy = big * (0.5 + rng.uniform(-0.08, 0.08, size=2))
    else:
      row, col = divmod(int(gt["cell"][i]), 3)
      frac = rng.uniform(0.38, 0.45) if gt["size"][i] == 1 else rng.uniform(0.2, 0.26)
      r = cell * frac * object_scale
      cx, cy = cell * (col + 0.5 + jitter[0]), cell * (row + 0.5 + jitter[1])
    _draw_shape(draw, shape, cx, cy, r, rgb, rng)
  return np.asarray(canvas.resize((resolution, resolution), Image.BOX), np.uint8)


# ---------------------------------------------------------------------------------------------
# Captions


def _pick(rng: np.random.Generator, options):
  return options[int(rng.integers(len(options)))]


def _a(word: str) -> str:
  return ("an " if word[0] in "aeiou" else "a ") + word


def _describe(rng, shape: int, color: int, size: int) -> str:
  """'large crimson disc' style noun phrase (no article)."""
  s = _pick(rng, SHAPE_SYNONYMS[SHAPES[shape]])
  c = _pick(rng, COLOR_SYNONYMS[COLORS[color]])
  with_size = rng.random() < 0.8
  return f"{_pick(rng, SIZE_SYNONYMS[SIZES[size]])} {c} {s}" if with_size else f"{c} {s}"


def _relation(cell_a: int, cell_b: int, rng) -> str:
  """How object a sits relative to b, in words."""
  (ra, ca), (rb, cb) = divmod(cell_a, 3), divmod(cell_b, 3)
  options = []
  if ca < cb:
    options += ["left of", "to the left of"]
  elif ca > cb:
    options += ["right of", "to the right of"]
  if ra < rb:
    options += ["above", "over"]
  elif ra > rb:
    options += ["below", "under"]
  return _pick(rng, options)


def caption_scene(gt: dict[str, np.ndarray], rng: np.random.Generator) -> str:
  n = int(gt["num_objects"])
  objs = [(int(gt["shape"][i]), int(gt["color"][i]), int(gt["size"][i]), int(gt["cell"][i]))
          for i in range(n)]
  if SHAPES[objs[0][0]] == "blob":
    c = _pick(rng, COLOR_SYNONYMS[COLORS[objs[0][1]]])
    noun = _pick(rng, SHAPE_SYNONYMS["blob"])
    templates = (f"{_a(c)} {noun}", f"something {c}", f"{c}", f"a big {c} {noun}",
                 f"{_a(c)} {noun} on a muted background", f"the colour {c}")
    return _pick(rng, templates)
  phrases = [_describe(rng, s, c, z) for s, c, z, _ in objs]
  where = [_pick(rng, CELL_PHRASES[cell]) for *_, cell in objs]
  t = int(rng.integers(4))
  if n == 1:
    (p,), (w,) = phrases, where
    return [f"{_a(p)} {w}", f"{CELL_SHORT[objs[0][3]]}: {p}", f"there is {_a(p)} {w}",
            f"{w}, {_a(p)}"][t]
  if n == 2:
    rel = _relation(objs[0][3], objs[1][3], rng)
    a, b = phrases
    return [f"{_a(a)} {rel} {_a(b)}", f"{_a(a)} {where[0]} and {_a(b)} {where[1]}",
            f"two shapes: {_a(a)} {rel} {_a(b)}",
            f"{CELL_SHORT[objs[0][3]]}: {a}; {CELL_SHORT[objs[1][3]]}: {b}"][t]
  listed = ", ".join(f"{_a(p)} {w}" for p, w in zip(phrases[:-1], where[:-1]))
  rel = _relation(objs[0][3], objs[1][3], rng)
  return [f"{listed} and {_a(phrases[-1])} {where[-1]}",
          f"three shapes: {', '.join(_a(p) for p in phrases[:-1])} and {_a(phrases[-1])}",
          f"{_a(phrases[0])} {rel} {_a(phrases[1])}, plus {_a(phrases[2])} {where[2]}",
          "; ".join(f"{CELL_SHORT[o[3]]}: {p}" for o, p in zip(objs, phrases))][t]


def render_example(spec: SceneSpec, split: str, index: int,
                   num_captions: int = 3) -> dict[str, object]:
  """One full example (image, captions, ground truth), deterministic in (seed, split, index)."""
  rng = np.random.default_rng([spec.seed, SPLIT_IDS[split], index])
  gt = sample_scene(rng, split, spec.colors_only, spec.max_objects, spec.cells)
  image = render_scene(gt, rng, spec.resolution, spec.supersample,
                       spec.object_scale)  # [R, R, 3]
  captions = []
  for _ in range(num_captions * 4):  # distinct captions where the templates allow
    c = caption_scene(gt, rng)
    if c not in captions:
      captions.append(c)
    if len(captions) == num_captions:
      break
  while len(captions) < num_captions:
    captions.append(captions[-1])
  return {"image": image, "captions": captions, "index": np.int64(index), **gt}
