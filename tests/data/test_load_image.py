"""images.load_image's decoding of odd files: PIL's pixel limit and data.max_pixels, camera JPEGs
with a preview (MPO), 16-bit depths, palette transparency, the notes on upscaled or mostly
cropped images, ICC colour profiles (converted to sRGB), bounded memory. AVIF and HEIC files:
test_optional_decoders.py."""
from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from llmimg_jax.data import images as images_lib
from tests.data.utils import adobe_rgb_icc, linear_gray_icc, linear_srgb_icc, naive_cmyk_icc
from tests.memory import traced_peaks


@pytest.mark.filterwarnings("error")  # no DecompressionBombWarning either
@pytest.mark.parametrize("name, side", [("big.png", 40), ("big.tif", 40), ("big.tif", 60)])
def test_max_pixels_above_pils_limit_admits_the_image(tmp_path, monkeypatch, name, side):
  """PIL refuses images over its own limit while opening, and a TIFF's again while loading it
  (over twice the limit: DecompressionBombError, which stopped a folder build; over it: a
  warning); data.max_pixels overrides both."""
  from llmimg_jax.data import images
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a stand-in for PIL's 89.5 MP
  path = str(tmp_path / name)
  Image.new("RGB", (side, side), (9, 99, 199)).save(path)  # 1,600 or 3,600 pixels
  with pytest.raises(images.SkipImage, match="too_large"):
    images.load_image(path, 8)  # PIL's limit
  with pytest.raises(images.SkipImage, match="too_large"):
    images.load_image(path, 8, max_pixels=1500)
  image, _ = images.load_image(path, 8, max_pixels=10_000)
  np.testing.assert_array_equal(image, np.full((8, 8, 3), (9, 99, 199)))
  assert Image.MAX_IMAGE_PIXELS == 1000  # restored


def _blp_with_a_larger_jpeg(path, declared: int, real: int) -> None:
  """A BLP1 texture (Blizzard's; PIL reads it by content, whatever its name) declaring
  declared x declared pixels whose JPEG holds real x real: PIL checks the JPEG's size against its
  limit only as it loads it, after load_image's own check of the declared size."""
  jpeg = io.BytesIO()
  Image.new("RGB", (real, real), (200, 10, 10)).save(jpeg, "JPEG")
  jpeg = jpeg.getvalue()
  header = b"BLP1" + struct.pack("<iIIIii", 0, 0, declared, declared, 5, 0)  # JPEG, no alpha
  mipmaps = struct.pack("<16I", len(header) + 128 + 4, *[0] * 15)
  mipmaps += struct.pack("<16I", len(jpeg), *[0] * 15)
  path.write_bytes(header + mipmaps + struct.pack("<I", 0) + jpeg)  # shared JPEG header: none


def test_a_bomb_warning_the_program_saw_before_still_refuses_the_image(tmp_path, monkeypatch):
  """PIL's DecompressionBombWarning is an error while load_image opens and loads, but Python
  shows a warning once per message and place (PIL.Image's __warningregistry__), and a filter put
  in by hand does not reset that: once the program had seen PIL's warning for an image, the same
  image (same pixel count and limit) was let through by the error filter, decoded and stored."""
  from llmimg_jax.data import images
  path = tmp_path / "texture.png"
  _blp_with_a_larger_jpeg(path, 10, 12)  # 100 pixels declared, 144 loaded
  with pytest.raises(images.SkipImage, match="too_large"):
    images.load_image(str(path), 8, max_pixels=100)
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
  shown = []
  monkeypatch.setattr(warnings, "showwarning", lambda message, *_: shown.append(message))
  with Image.open(path) as img:  # the program's own: PIL warns (shown once) and decodes it
    img.load()
  assert [type(message) for message in shown] == [Image.DecompressionBombWarning]
  with pytest.raises(images.SkipImage, match="too_large"):
    images.load_image(str(path), 8, max_pixels=100)


def test_camera_jpeg_with_an_embedded_preview_is_a_jpeg(tmp_path, monkeypatch):
  """PIL opens a JPEG carrying a second (MPF) image as "MPO": still a .jpg, decoded reduced."""
  from PIL import MpoImagePlugin
  from llmimg_jax.data import images
  path = tmp_path / "camera.jpg"
  Image.new("RGB", (640, 480), (200, 30, 40)).save(
      path, "MPO", save_all=True, append_images=[Image.new("RGB", (160, 120))])
  with Image.open(path) as img:
    assert img.format == "MPO"
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
  with Image.open(dark) as img:
    assert img.mode == "I"
  rgb, _ = load_image(str(dark), 8)
  assert rgb.shape == (8, 8, 3) and rgb.max() == 1, rgb.max()  # 200 / 257 -> 1, not 200
  ten_bit = tmp_path / "ten_bit.pgm"  # PIL scales maxval 1023 to 65535: 512 -> ~50% grey
  _pgm(str(ten_bit), np.full((8, 8), 512), 1023)
  assert load_image(str(ten_bit), 8)[0].max() == 128
  # A mode-I image whose source depth is unknown (32-bit TIFF) keeps the value heuristic.
  tiff = tmp_path / "int32.tif"
  Image.fromarray(np.full((8, 8), 200, np.int32)).save(tiff)
  with Image.open(tiff) as img:
    assert img.mode == "I"
  assert load_image(str(tiff), 8)[0].max() == 200


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
  with Image.open(tmp_path / "t.png") as opened:
    assert opened.info["transparency"] == 0
  rgb, _ = images_lib.load_image(str(tmp_path / "t.png"), 8)
  assert rgb[:, :4].reshape(-1, 3).tolist() == [[255, 255, 255]] * 32
  assert rgb[:, 4:].reshape(-1, 3).tolist() == [[255, 0, 0]] * 32


def test_a_transparent_grey_of_a_16bit_png_is_composited_over_white(tmp_path):
  """A 16-bit greyscale PNG's tRNS (an int in info["transparency"], in 16-bit values) loads white
  where a sample equals it, as an 8-bit one's does; a neighbouring value (the same 8-bit grey
  once rounded) stays opaque. It was lost with the conversion to 8 bits: left as black."""
  samples = np.full((8, 8), 40000, np.uint16)
  samples[:, :3] = 0  # transparent
  samples[:, 3] = 1  # opaque black: rounds to the transparent value's 8-bit grey
  eight_bit = ((samples + 128) // 257).astype(np.uint8)  # 1 -> 0: the transparent value
  for name, grey in (("g16.png", samples), ("g8.png", eight_bit)):
    Image.fromarray(grey).save(tmp_path / name, transparency=0)
    with Image.open(tmp_path / name) as img:
      assert img.info["transparency"] == 0 and img.mode in ("L", "I;16", "I"), img.mode
    rgb, _ = images_lib.load_image(str(tmp_path / name), 8)
    assert rgb[:, :3].reshape(-1, 3).tolist() == [[255, 255, 255]] * 24, name
    assert rgb[:, 4:].reshape(-1, 3).tolist() == [[156, 156, 156]] * 32, name
  assert rgb[:, 3].reshape(-1, 3).tolist() == [[255, 255, 255]] * 8  # 8-bit: 1 // 257 is 0
  assert images_lib.load_image(str(tmp_path / "g16.png"), 8)[0][:, 3].max() == 0  # 1: opaque
  # With a grey profile too: the grey is converted, the alpha kept.
  Image.fromarray(samples).save(tmp_path / "g16_icc.png", transparency=0,
                                icc_profile=linear_gray_icc())
  rgb, notes = images_lib.load_image(str(tmp_path / "g16_icc.png"), 8)
  assert notes == [] and rgb[:, :3].reshape(-1, 3).tolist() == [[255, 255, 255]] * 24
  assert rgb[:, 3].max() == 0 and rgb[0, 4, 0] > 156  # linear 156 is a lighter sRGB grey


def _rgb16_png(samples: np.ndarray, transparent: tuple[int, int, int]) -> bytes:
  """A 16-bit RGB PNG of uint16 [h, w, 3] `samples` with a transparent colour (tRNS): PIL writes
  none."""
  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  h, w, _ = samples.shape
  rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in samples)  # filter 0 per row
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
          + chunk(b"tRNS", struct.pack(">3H", *transparent)) + chunk(b"IDAT", zlib.compress(rows))
          + chunk(b"IEND", b""))


def test_a_transparent_colour_of_a_16bit_rgb_png_is_composited_over_white(tmp_path):
  """PIL reads a 16-bit RGB PNG as 8-bit, but its tRNS in 16-bit values: only colours whose
  samples were all below 256 (or multiples of 257) were made transparent; others kept the
  colour, e.g. a background that was to be white."""
  key = (0x1234, 0x8080, 0xC0C0)
  samples = np.empty((8, 8, 3), np.uint16)
  samples[:] = key  # transparent
  samples[:, 4:] = (0, 0xFFFF, 0)  # opaque green
  (tmp_path / "rgb16.png").write_bytes(_rgb16_png(samples, key))
  with Image.open(tmp_path / "rgb16.png") as img:
    assert (img.mode, img.info["transparency"]) == ("RGB", key)
  rgb, notes = images_lib.load_image(str(tmp_path / "rgb16.png"), 8)
  assert notes == [] and rgb[:, :4].reshape(-1, 3).tolist() == [[255, 255, 255]] * 32
  assert rgb[:, 4:].reshape(-1, 3).tolist() == [[0, 255, 0]] * 32


_INTENT = ImageCms.Intent.RELATIVE_COLORIMETRIC


_FLAGS = ImageCms.Flags.BLACKPOINTCOMPENSATION


_SRGB = ImageCms.createProfile("sRGB")


def _icc_reference(img: Image.Image, icc: bytes, out_mode: str) -> np.ndarray:
  """ImageCms's own conversion of `img` (tagged `icc`) to sRGB: what load_image should store."""
  profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
  return np.asarray(ImageCms.profileToProfile(img, profile, _SRGB, renderingIntent=_INTENT,
                                              outputMode=out_mode, flags=_FLAGS))


def test_an_icc_profile_is_converted_to_srgb(tmp_path):
  """Pixels tagged with a wider-gamut profile (Adobe RGB) are stored as their sRGB colours, in
  PNG and JPEG, with alpha composited over white after the conversion."""
  rng = np.random.default_rng(0)
  raw = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
  icc = adobe_rgb_icc()
  Image.fromarray(raw).save(tmp_path / "adobe.png", icc_profile=icc)
  rgb, notes = images_lib.load_image(str(tmp_path / "adobe.png"), 8)
  assert notes == []
  np.testing.assert_array_equal(rgb, _icc_reference(Image.fromarray(raw), icc, "RGB"))
  assert np.abs(rgb.astype(int) - raw).max() > 20  # not the raw values
  Image.fromarray(raw).save(tmp_path / "adobe.jpg", icc_profile=icc, quality=95)
  decoded = Image.open(tmp_path / "adobe.jpg").convert("RGB")
  np.testing.assert_array_equal(images_lib.load_image(str(tmp_path / "adobe.jpg"), 8)[0],
                                _icc_reference(decoded, icc, "RGB"))
  rgba = np.concatenate([raw, np.full((8, 8, 1), 128, np.uint8)], -1)
  Image.fromarray(rgba).save(tmp_path / "adobe_rgba.png", icc_profile=icc)
  ref = _icc_reference(Image.fromarray(rgba), icc, "RGBA").astype(np.float32)
  ref = np.rint(ref[..., :3] * (128 / 255) + 255 * (1 - 128 / 255))
  np.testing.assert_array_equal(images_lib.load_image(str(tmp_path / "adobe_rgba.png"), 8)[0], ref)


def test_grey_and_16bit_images_with_a_grey_profile_are_converted(tmp_path):
  """A linear grey profile: mid grey (128, or 32896 in 16 bits) is sRGB ~188, not 128."""
  icc = linear_gray_icc()
  Image.new("L", (8, 8), 128).save(tmp_path / "grey.png", icc_profile=icc)
  expected = _icc_reference(Image.new("L", (8, 8), 128), icc, "RGB")
  assert 180 < expected[0, 0, 0] < 195
  np.testing.assert_array_equal(images_lib.load_image(str(tmp_path / "grey.png"), 8)[0], expected)
  Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(tmp_path / "deep.png", icc_profile=icc)
  with Image.open(tmp_path / "deep.png") as deep:
    assert deep.info["icc_profile"] == icc
  np.testing.assert_array_equal(images_lib.load_image(str(tmp_path / "deep.png"), 8)[0], expected)
  la = Image.merge("LA", (Image.new("L", (8, 8), 128), Image.new("L", (8, 8), 255)))
  la.save(tmp_path / "grey_alpha.png", icc_profile=icc)
  np.testing.assert_array_equal(
      images_lib.load_image(str(tmp_path / "grey_alpha.png"), 8)[0], expected)


def test_an_unusable_icc_profile_keeps_the_raw_values_with_a_note(tmp_path):
  """Garbage profile bytes, or a profile of another colour space than the pixels (an RGB
  profile on a CMYK JPEG): the image is still stored, as before, and noted "bad_icc"."""
  Image.new("RGB", (8, 8), (200, 100, 50)).save(tmp_path / "bad.png", icc_profile=b"x" * 200)
  rgb, notes = images_lib.load_image(str(tmp_path / "bad.png"), 8)
  assert notes == ["bad_icc"]
  np.testing.assert_array_equal(rgb, np.full((8, 8, 3), (200, 100, 50)))
  cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
  cmyk.save(tmp_path / "cmyk.jpg", icc_profile=adobe_rgb_icc(), quality=95)
  rgb, notes = images_lib.load_image(str(tmp_path / "cmyk.jpg"), 8)
  assert notes == ["bad_icc"]
  np.testing.assert_array_equal(rgb, np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB")))


def test_an_srgb_profile_leaves_the_values_as_stored(tmp_path):
  """sRGB-tagged images (most camera and web images) store exactly what earlier builds did."""
  raw = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  srgb = ImageCms.ImageCmsProfile(_SRGB).tobytes()
  Image.fromarray(raw).save(tmp_path / "srgb.png", icc_profile=srgb)
  rgb, notes = images_lib.load_image(str(tmp_path / "srgb.png"), 8)
  assert notes == [] and np.array_equal(rgb, raw)


def test_a_linear_profile_named_srgb_is_converted(tmp_path):
  """sRGB is recognised by what the profile does, not by its name: a linear-gamma profile
  described "sRGB linear" (GIMP's, Krita's) is converted like any other."""
  icc = linear_srgb_icc()
  Image.new("RGB", (8, 8), (128, 128, 128)).save(tmp_path / "linear.png", icc_profile=icc)
  rgb, notes = images_lib.load_image(str(tmp_path / "linear.png"), 8)
  assert notes == []
  np.testing.assert_array_equal(
      rgb, _icc_reference(Image.new("RGB", (8, 8), (128, 128, 128)), icc, "RGB"))
  assert rgb.min() > 180


def test_a_palette_image_with_a_profile_is_converted(tmp_path):
  raw = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  Image.fromarray(raw).quantize(16).save(tmp_path / "p.png", icc_profile=adobe_rgb_icc())
  decoded = Image.open(tmp_path / "p.png")
  assert decoded.mode == "P"
  np.testing.assert_array_equal(images_lib.load_image(str(tmp_path / "p.png"), 8)[0],
                                _icc_reference(decoded.convert("RGB"), adobe_rgb_icc(), "RGB"))


def test_a_cmyk_jpeg_with_a_cmyk_profile_is_converted_by_it(tmp_path):
  """A CMYK JPEG's colours come from its profile's lookup table, not PIL's naive formula."""
  icc = naive_cmyk_icc()
  Image.new("CMYK", (8, 8), (0, 128, 255, 40)).save(tmp_path / "press.jpg", icc_profile=icc,
                                                     quality=95)
  decoded = Image.open(tmp_path / "press.jpg")
  assert decoded.mode == "CMYK"
  rgb, notes = images_lib.load_image(str(tmp_path / "press.jpg"), 8)
  assert notes == []
  np.testing.assert_array_equal(rgb, _icc_reference(decoded, icc, "RGB"))
  assert np.abs(rgb.astype(int) - np.asarray(decoded.convert("RGB"))).max() > 20


def test_transparency_is_composited_in_bounded_memory():
  """An RGBA image was composited over white as float32 arrays of the whole image (~40 bytes per
  pixel: 3.5 GB for an image at PIL's 89.5 MP limit); now in blocks of rows, with the same
  values."""
  rng = np.random.default_rng(0)
  h, w = 1500, 1000
  rgba = rng.integers(0, 256, (h, w, 4), np.uint8)
  rgba[:10, :, 3], rgba[10:20, :, 3] = 0, 255
  got, peaks = traced_peaks(lambda: images_lib._to_rgb(Image.fromarray(rgba, "RGBA")),
                            12 * h * w)
  x = rgba.astype(np.float32)
  alpha = x[..., 3:] / 255.0
  want = np.clip(np.rint(x[..., :3] * alpha + 255.0 * (1.0 - alpha)), 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(got, want)
  assert (got[:10] == 255).all() and (got[10:20] == rgba[10:20, :, :3]).all()
  # The uint8 RGBA copy and result, and one block (9.1 bytes per pixel).
  assert min(peaks) < 12 * h * w, [p / (h * w) for p in peaks]


def test_the_declared_pillow_floor_has_the_imagecms_api_used():
  """icc.py uses ImageCms.Flags (Pillow 10.3): under "Pillow>=10.0" pip kept a 10.2 install, on
  which importing llmimg_jax.data failed with an AttributeError."""
  import pathlib
  import re
  pyproject = (pathlib.Path(__file__).parents[2] / "pyproject.toml").read_text()
  floor = re.search(r'"Pillow>=(\d+)\.(\d+)', pyproject)
  assert floor and tuple(map(int, floor.groups())) >= (10, 3)


def _gray8_float64(a: np.ndarray, mode: str, sixteen_bit: bool) -> np.ndarray:
  """The former _gray8: a float64 copy of the whole image (and three more of its size)."""
  a = a.astype(np.float64)
  if mode.startswith("I;16") or (mode == "I" and (sixteen_bit or a.max(initial=0) > 255)):
    a = a / 257.0
  elif mode == "F" and a.max(initial=0) <= 1.0:
    a = a * 255.0
  return np.clip(np.rint(a), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("mode,sixteen_bit", [("I;16", False), ("I", True), ("I", False),
                                              ("I8", False), ("F", False), ("F1", False)])


def test_grey_high_bit_images_convert_to_the_same_values(mode, sixteen_bit):
  """Every 16-bit value 0..65535 (and, for mode I, values outside it) -> what the float64 path
  gave; mode I with values <= 255 only, and mode F (0..1 or beyond), likewise."""
  every = np.arange(65536).reshape(256, 256)
  values = {"I;16": every.astype(np.uint16),
            "I": np.concatenate([every, [[-70000, -129, -128, -1] + [70000, 2**31 - 1] * 126]]),
            "I8": np.arange(256).reshape(16, 16),
            "F": np.linspace(0, 1, 4096).reshape(64, 64),
            "F1": np.linspace(-3, 300, 4096).reshape(64, 64)}[mode]
  img = Image.fromarray(values.astype(np.float32) if mode.startswith("F") else
                        values if mode == "I;16" else values.astype(np.int32))
  assert img.mode == {"I8": "I", "F1": "F"}.get(mode, mode)
  got = np.asarray(images_lib._gray8(img, sixteen_bit))
  want = _gray8_float64(np.asarray(img), img.mode, sixteen_bit)
  np.testing.assert_array_equal(got, want)
  if mode == "I;16":
    assert got[0, 0] == 0 and got[-1, -1] == 255 and got[0, 128] == 0 and got[0, 129] == 1


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16bit_grey_converts_in_bounded_memory(mode):
  """A 16-bit grey image was converted through float64 copies of the whole image (~24 bytes per
  pixel: 2.1 GB at PIL's 89.5 MP limit); now in integer blocks of rows."""
  h, w = 1500, 1000
  values = np.random.default_rng(0).integers(0, 65536, (h, w))
  values[0, :2] = 0, 65535
  img = Image.fromarray(values.astype(np.uint16 if mode == "I;16" else np.int32))
  assert img.mode == mode
  grey, peaks = traced_peaks(lambda: images_lib._gray8(img, sixteen_bit=True), 2 * h * w)
  got = np.asarray(grey)
  assert got.dtype == np.uint8 and got[0, 0] == 0 and got[0, 1] == 255
  np.testing.assert_array_equal(got, _gray8_float64(values, mode, True))
  # The uint8 result and one block of rows (1.53 bytes per pixel).
  assert min(peaks) < 2 * h * w, [p / (h * w) for p in peaks]
