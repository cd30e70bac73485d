"""llmimg_jax/images.py: captioned grids."""
import numpy as np
import pytest
from PIL import ImageFont

from llmimg_jax.images import _drawable, _wrap, caption_font, captioned_grid


def test_captions_wrap_by_their_drawn_width():
  font = ImageFont.load_default()
  for caption in ["WOMAN WITH MANY HATS ON THE LEFT SIDE OF A WIDE ROOM", "M" * 60, "a red circle"]:
    lines = _wrap(caption, font, 92, 3)
    assert 1 <= len(lines) <= 3 and all(font.getlength(line) <= 92 for line in lines), lines
  assert _wrap("a red circle", font, 92, 3) == ["a red circle"]
  assert _wrap("word " * 60, font, 92, 3)[-1].endswith("...")
  # PIL refused a text of over 1M characters (ValueError: too many characters in string), and
  # wrapped a shorter one whole, for seconds, though 3 lines show: cut to _MOST_CHARS first.
  for huge in ("word " * 300_000, "x" * 1_100_000, "x" * 9_000 + " " * 9_000 + "y"):
    lines = _wrap(huge, caption_font(), 92, 3)
    assert len(lines) == 3 and lines[-1].endswith("..."), lines
  assert _wrap("a cat" + " " * 9_000, font, 92, 3) == ["a cat"]
  assert _wrap(" " * 9_000 + "a cat", font, 92, 3) == ["a cat"]  # was '...'
  assert "".join(_wrap("i" * 4_096 + " ", font, 92, 500)) == "i" * 4_096  # whole, no '...'
  # One caption per image: a wide one stays under its own image, the neighbour's stays blank.
  grid = np.asarray(captioned_grid(np.full((2, 8, 8, 3), 255, np.uint8), ["MMMM " * 8, ""],
                                   columns=2))
  text = grid[96:]  # [caption rows, 2 cells, 3]
  assert (text[:, :96] < 128).any() and not (text[:, 96:] < 128).any()


def test_grid_cells_hold_the_images_in_row_major_order():
  """Image p * columns + j sits in row p, column j, enlarged without blending (8 -> 96 px)."""
  images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
  grid = np.asarray(captioned_grid(images, ["first prompt", "second prompt"]))
  text_h = (grid.shape[0] - 2 * 96) // 2
  assert grid.shape == (2 * (96 + text_h), 3 * 96, 3)
  for k, image in enumerate(images):
    p, j = divmod(k, 3)
    y, x = p * (96 + text_h), j * 96
    np.testing.assert_array_equal(grid[y:y + 96, x:x + 96], image.repeat(12, 0).repeat(12, 1))


def test_captions_beyond_ascii_are_drawn_and_missing_glyphs_are_question_marks():
  """PIL's default font (Aileron) drew é, ß and Ж as the box it draws for 中: the grid of 'café'
  was the grid of 'caf中'."""
  assert _drawable("café Жук 中文 🦊", ImageFont.load_default()) == "caf? ??? ?? ?"
  if caption_font().getname()[0] == ImageFont.load_default().getname()[0]:
    pytest.skip("none of images._FONTS is installed (Debian: fonts-dejavu-core)")
  grid = lambda caption: np.asarray(captioned_grid(np.zeros((1, 8, 8, 3), np.uint8), [caption]))
  assert not np.array_equal(grid("café"), grid("caf?"))
  assert not np.array_equal(grid("Жук"), grid("???"))
  np.testing.assert_array_equal(grid("caf中"), grid("caf?"))  # no CJK in these fonts
