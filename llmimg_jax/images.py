"""Image grids with their captions written underneath (training samples, sample.py, previews)."""
from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_LINE_HEIGHT = 12  # pixels per text line of a 10-point font
# Tried before PIL's default font, whose FreeType face (Aileron) holds ASCII only: é, ß or Ж came
# out as the same box as 中. Each holds Latin, Greek and Cyrillic; none of them CJK, few emoji.
_FONTS = ("DejaVuSans.ttf", "NotoSans-Regular.ttf", "LiberationSans-Regular.ttf", "Arial.ttf")


@functools.cache
def caption_font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
  """The first of _FONTS that PIL finds in the system's font folders, else PIL's default."""
  for name in _FONTS:
    try:
      return ImageFont.truetype(name, 10)
    except OSError:
      continue
  return ImageFont.load_default()


def _drawable(text: str, font) -> str:
  """`text` as `font` can draw it: '?' for a character it has no glyph for (drawn as a box)."""
  try:
    font.getlength(text)
  except UnicodeEncodeError:  # a bitmap font: Latin-1 only
    return text.encode("latin-1", "replace").decode("latin-1")
  if not isinstance(font, ImageFont.FreeTypeFont):
    return text
  return "".join(c if c == " " or _has_glyph(font, c) else "?" for c in text)


@functools.lru_cache(maxsize=4096)
def _has_glyph(font: ImageFont.FreeTypeFont, char: str) -> bool:
  """Whether `font` draws `char` otherwise than U+FFFF (a noncharacter: the missing-glyph box)."""
  drawn = lambda c: (font.getlength(c), np.asarray(font.getmask(c)).tobytes())
  return drawn(char) != drawn("\uffff")


# More than a caption's lines hold (2+ pixels a character, 3-5 lines of a cell or two): the rest
# is cut before wrapping, which took seconds for a 1 MB caption; PIL refuses over 1M characters.
_MOST_CHARS = 4096


def _wrap(text: str, font, width: float, max_lines: int) -> list[str]:
  """Lines of `text` no wider than `width` pixels in `font` (words split only when one alone is
  too wide); past `max_lines` (or _MOST_CHARS), the last line ends in '...'."""
  fits = lambda line: font.getlength(line) <= width
  lines: list[str] = []
  words = " ".join(text.split())
  for word in _drawable(words[:_MOST_CHARS], font).split(" "):
    line = f"{lines[-1]} {word}" if lines else word
    if lines and fits(line):
      lines[-1] = line
      continue
    lines.append("")
    for char in word:  # a new line; a word too wide for one is split where it overflows
      if lines[-1] and not fits(lines[-1] + char):
        lines.append("")
      lines[-1] += char
  if len(lines) > max_lines or len(words) > _MOST_CHARS:
    shown = min(len(lines), max_lines)
    last = lines[shown - 1]
    while last and not fits(last + "..."):
      last = last[:-1]
    lines = lines[:shown - 1] + [last + "..."]
  return [line for line in lines if line]


def captioned_grid(images: np.ndarray, captions: Sequence[str], *, columns: int | None = None,
                   cell: int = 96, max_lines: int = 3) -> Image.Image:
  """Images uint8 [n, H, W, 3] in a grid, each caption wrapped under what it describes.

  With one caption per row (`columns` defaults to n // len(captions)), a row of samples shares its
  prompt; with one caption per image (pass `columns`), each image has its own. Images are scaled
  to `cell` pixels (nearest when enlarging, so small samples stay crisp).
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f"Expected uint8 images [n, H, W, 3], got {images.dtype} {images.shape}.")
  n = len(images)
  if columns is None:
    if not captions or n % len(captions):
      raise ValueError(f"{n} images do not split into {len(captions)} captioned rows.")
    columns = n // len(captions)
  per_image = len(captions) == n and len(captions) * columns != n  # (the same layout if both)
  if not per_image and len(captions) * columns != n:
    raise ValueError(f"{len(captions)} captions fit neither {n} images nor their rows of "
                     f"{columns}.")
  rows = -(-n // columns)
  label_width = cell if per_image else columns * cell
  text_h = max_lines * _LINE_HEIGHT + 4
  font = caption_font()
  canvas = Image.new("RGB", (columns * cell, rows * (cell + text_h)), "white")
  draw = ImageDraw.Draw(canvas)
  for i, image in enumerate(images):
    tile = Image.fromarray(image)
    resample = Image.NEAREST if tile.width <= cell else Image.LANCZOS
    x, y = (i % columns) * cell, (i // columns) * (cell + text_h)
    canvas.paste(tile.resize((cell, cell), resample), (x, y))
  for j, caption in enumerate(captions):
    x, y = ((j % columns) * cell, (j // columns) * (cell + text_h)) if per_image else (0, j * (
        cell + text_h))
    for k, line in enumerate(_wrap(caption, font, label_width - 4, max_lines)):
      draw.text((x + 2, y + cell + 2 + k * _LINE_HEIGHT), line, fill="black", font=font)
  return canvas
