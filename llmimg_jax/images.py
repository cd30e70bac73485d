"""Image grids with their captions written underneath (training samples, sample.py, previews)."""
from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_LINE_HEIGHT = 12  # pixels per text line of PIL's default bitmap font
_CHAR_WIDTH = 6


def captioned_grid(images: np.ndarray, captions: Sequence[str], *, cell: int = 96,
                   max_lines: int = 3) -> Image.Image:
  """A grid with one row per caption: images uint8 [rows * cols, H, W, 3], captions [rows].

  Each image is scaled to `cell` pixels (nearest, so small samples stay crisp) and the caption of
  each row is written under it, wrapped to the row's width.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f"Expected uint8 images [n, H, W, 3], got {images.dtype} {images.shape}.")
  rows = len(captions)
  if rows == 0 or len(images) % rows:
    raise ValueError(f"{len(images)} images do not split into {rows} captioned rows.")
  cols = len(images) // rows
  width = cols * cell
  font = ImageFont.load_default()
  wrap = max(8, width // _CHAR_WIDTH)
  lines = [textwrap.wrap(c, wrap)[:max_lines] or [""] for c in captions]
  text_h = max_lines * _LINE_HEIGHT + 4
  canvas = Image.new("RGB", (width, rows * (cell + text_h)), "white")
  draw = ImageDraw.Draw(canvas)
  for r in range(rows):
    top = r * (cell + text_h)
    for c in range(cols):
      tile = Image.fromarray(images[r * cols + c]).resize((cell, cell), Image.NEAREST)
      canvas.paste(tile, (c * cell, top))
    for i, line in enumerate(lines[r]):
      xy = (2, top + cell + 2 + i * _LINE_HEIGHT)
      try:
        draw.text(xy, line, fill="black", font=font)
      except UnicodeEncodeError:  # a bitmap font without these glyphs (CJK, emoji)
        draw.text(xy, line.encode("latin-1", "replace").decode("latin-1"), fill="black", font=font)
  return canvas
