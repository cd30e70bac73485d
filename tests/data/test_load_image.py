"""images.load_image's decoding of odd files: PIL's pixel limit and data.max_pixels, camera JPEGs
with a preview (MPO), 16-bit depths, palette transparency, and the notes on upscaled or mostly
cropped images."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from llmimg_jax.data import images as images_lib


def test_max_pixels_above_pils_limit_admits_the_image(tmp_path, monkeypatch):
  """PIL refuses images over its own limit while opening; data.max_pixels overrides it."""
  from llmimg_jax.data import images
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a stand-in for PIL's 89.5 MP
  path = str(tmp_path / "big.png")
  Image.new("RGB", (40, 40), (9, 99, 199)).save(path)  # 1,600 pixels
  with pytest.raises(images.SkipImage, match="too_large"):
    images.load_image(path, 8)  # PIL's limit
  with pytest.raises(images.SkipImage, match="too_large"):
    images.load_image(path, 8, max_pixels=1500)
  image, _ = images.load_image(path, 8, max_pixels=10_000)
  np.testing.assert_array_equal(image, np.full((8, 8, 3), (9, 99, 199)))
  assert Image.MAX_IMAGE_PIXELS == 1000  # restored


def test_camera_jpeg_with_an_embedded_preview_is_a_jpeg(tmp_path, monkeypatch):
  """PIL opens a JPEG carrying a second (MPF) image as "MPO": still a .jpg, decoded reduced."""
  from PIL import MpoImagePlugin
  from llmimg_jax.data import images
  path = tmp_path / "camera.jpg"
  Image.new("RGB", (640, 480), (200, 30, 40)).save(
      path, "MPO", save_all=True, append_images=[Image.new("RGB", (160, 120))])
  assert Image.open(path).format == "MPO"
  drafts = []
  draft = MpoImagePlugin.MpoImageFile.draft
  monkeypatch.setattr(MpoImagePlugin.MpoImageFile, "draft",
                      lambda self, *a: drafts.append(a) or draft(self, *a))
  image, notes = images.load_image(path, 8)
  assert notes == [] and drafts == [("RGB", (8, 8))]
  assert image.shape == (8, 8, 3)
  np.testing.assert_allclose(image.reshape(-1, 3).mean(0), (200, 30, 40), atol=4)


def _pgm(path: str, values: np.ndarray, maxval: int) -> None:
  """A binary greyscale PGM (P5) with 16-bit big-endian samples."""
  with open(path, "wb") as f:
    f.write(f"P5 {values.shape[1]} {values.shape[0]} {maxval}\n".encode())
    f.write(values.astype(">u2").tobytes())


def test_dark_16bit_images_are_not_read_as_8bit(tmp_path):
  """PIL opens a PGM with maxval > 255 as mode I in 0..65535; one with every value <= 255 is a
  near-black 16-bit image, not an 8-bit one."""
  from llmimg_jax.data.images import load_image
  dark = tmp_path / "dark.pgm"
  _pgm(str(dark), np.full((8, 8), 200), 65535)
  assert Image.open(dark).mode == "I"
  rgb, _ = load_image(str(dark), 8)
  assert rgb.shape == (8, 8, 3) and rgb.max() == 1, rgb.max()  # 200 / 257 -> 1, not 200
  ten_bit = tmp_path / "ten_bit.pgm"  # PIL scales maxval 1023 to 65535: 512 -> ~50% grey
  _pgm(str(ten_bit), np.full((8, 8), 512), 1023)
  assert load_image(str(ten_bit), 8)[0].max() == 128
  # A mode-I image whose source depth is unknown (32-bit TIFF) keeps the value heuristic.
  tiff = tmp_path / "int32.tif"
  Image.fromarray(np.full((8, 8), 200, np.int32)).save(tiff)
  assert Image.open(tiff).mode == "I" and load_image(str(tiff), 8)[0].max() == 200


def test_upscaled_and_mostly_cropped_images_are_noted(tmp_path):
  from llmimg_jax.data import images
  for name, size, notes in (("thumb.png", (4, 4), ["upscaled"]),
                            ("panorama.png", (100, 30), ["cropped_over_half"]),
                            ("both.png", (30, 6), ["upscaled", "cropped_over_half"]),
                            ("fine.png", (20, 10), [])):
    Image.new("RGB", size).save(tmp_path / name)
    assert images.load_image(str(tmp_path / name), 8)[1] == notes, name


def test_a_transparent_palette_entry_is_composited_over_white(tmp_path):
  """A P-mode PNG's tRNS (img.info["transparency"]): its transparent black index loads white."""
  indices = np.zeros((8, 8), np.uint8)  # index 0: black, transparent
  indices[:, 4:] = 1  # index 1: opaque red
  img = Image.fromarray(indices, "P")
  img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
  img.save(tmp_path / "t.png", transparency=0)
  assert Image.open(tmp_path / "t.png").info["transparency"] == 0
  rgb, _ = images_lib.load_image(str(tmp_path / "t.png"), 8)
  assert rgb[:, :4].reshape(-1, 3).tolist() == [[255, 255, 255]] * 32
  assert rgb[:, 4:].reshape(-1, 3).tolist() == [[255, 0, 0]] * 32
