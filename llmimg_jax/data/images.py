"""Robust decoding of user images to square uint8 sRGB arrays (PIL only).

Every failure but running out of memory is a `SkipImage` with a short reason, so a dataset build
can count the reasons and carry on instead of crashing halfway (a MemoryError ends it).
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from llmimg_jax import cpus
from llmimg_jax.data import decode_guards
from llmimg_jax.data import icc as icc_lib

log = logging.getLogger(__name__)

# Every image file a folder may hold (its fingerprint, its uncaptioned images); whether this
# install decodes each: `_missing_decoder` (AVIF needs a Pillow built with it, HEIC/HEIF the
# pillow-heif plugin, which is not a dependency; only for files PIL cannot identify). Of an
# animated image (.gif, .apng, .webp) or a multi-picture one (.mpo: a 3D camera's two views) the
# first frame is read.
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".png", ".apng", ".gif", ".bmp", ".tif", ".tiff",
    ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".avif", ".heic", ".heif"})
# What PIL's `format` may be for each extension; anything else is loaded but noted.
_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".mpo": "JPEG",
            ".png": "PNG", ".apng": "PNG", ".gif": "GIF", ".bmp": "BMP", ".tif": "TIFF",
            ".tiff": "TIFF", ".webp": "WEBP", ".tga": "TGA", ".ico": "ICO", ".ppm": "PPM",
            ".pgm": "PPM", ".pbm": "PPM", ".pnm": "PPM", ".avif": "AVIF", ".heic": "HEIF",
            ".heif": "HEIF"}
# Skip reasons of images this install cannot decode -> the fix (captioned_folder reports them).
DECODER_FIXES = {
    "needs_pillow_heif": "HEIC/HEIF images need the pillow-heif plugin: pip install pillow-heif",
    "needs_pillow_avif": "AVIF images need a Pillow built with AVIF: pip install -U pillow",
}
# Bumped whenever the same file decodes to other stored pixels, so that captioned_folder flags
# builds made before (their metadata's summary["decoder"]; none means 1). 2: ICC profiles are
# converted to sRGB; .avif (and .heic/.heif with pillow-heif) are read. 3: a 16-bit greyscale
# PNG's transparent grey value (tRNS) is composited over white, as an 8-bit one's always was.
# 4: .jpe, .apng and .mpo files are read (skipped as unsupported_extension before). 5: a 16-bit
# RGB PNG's transparent colour (tRNS) is composited over white (`_narrow_rgb_key`).
DECODER_VERSION = 5
# The extensions each decoder version added: an older build read (and fingerprinted) none of them.
_ADDED_EXTENSIONS = {2: frozenset({".avif", ".heic", ".heif"}),
                     4: frozenset({".jpe", ".apng", ".mpo"})}
_BLOCK_PIXELS = 1 << 16  # about this many pixels per block of rows (`_row_blocks`)
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_heif_registered: bool | None = None  # pillow-heif imported and registered; None: not tried


def extensions_of(decoder: int) -> frozenset[str]:
  """The image extensions that decoder version `decoder` read (its builds' fingerprints)."""
  return IMAGE_EXTENSIONS.difference(*(e for v, e in _ADDED_EXTENSIONS.items() if v > decoder))


class SkipImage(Exception):
  """An image that cannot be used; `reason` is one of the skip-summary keys."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason


def _sixteen_bit_samples(img: Image.Image) -> bool:
  """Whether a freshly opened mode-I image holds 16-bit samples: PGM/PPM with a maxval above 255
  (PIL rescales them to 0..65535), PNG (older Pillows' mode for 16-bit grey), 16-bit TIFF. Then
  a dark image (every value <= 255) is still 16-bit, not 8-bit."""
  if img.mode != "I":
    return False
  if img.format in ("PPM", "PNG"):
    return True
  if img.format == "TIFF":
    bits = getattr(img, "tag_v2", {}).get(258)  # BitsPerSample: an int or one per channel
    return 16 in (bits if isinstance(bits, tuple) else (bits,))
  return False


def _row_blocks(height: int, width: int) -> list[slice]:
  """Slices of rows of about _BLOCK_PIXELS pixels each: per-block float or int32 copies instead of
  whole-image ones (at PIL's 89.5 MP limit those took gigabytes)."""
  rows = max(1, _BLOCK_PIXELS // max(1, width))
  return [slice(y, min(height, y + rows)) for y in range(0, height, rows)]


def _gray8(img: Image.Image, sixteen_bit: bool) -> Image.Image:
  """A mode I/I;16*/F image -> mode L. `sixteen_bit`: a mode-I image's samples are 16-bit
  (`_sixteen_bit_samples`); otherwise mode I is taken as 16-bit only when some value exceeds 255.

  In blocks of rows, integer samples as int32 (float64 copies of a whole 16-bit image at PIL's
  89.5 MP limit took ~2.1 GB): round(v / 257) is (v + 128) // 257, never a tie (257 is odd)."""
  mode, (w, h) = img.mode, img.size
  high = 0 if mode.startswith("I;16") else (img.getextrema() or (0, 0))[1]  # I;16B has none
  out = np.empty((h, w), np.uint8)
  wide = mode.startswith("I;16") or sixteen_bit or high > 255  # 16-bit range -> 8-bit
  scale = 255.0 if high <= 1.0 else 1.0  # mode F
  for rows in _row_blocks(h, w):
    block = np.asarray(img.crop((0, rows.start, w, rows.stop)))  # [rows, w]: uint16, int32, f32
    if mode == "F":
      out[rows] = np.clip(np.rint(block.astype(np.float64) * scale), 0, 255)
    else:
      block = np.clip(block, 0, 65535 if wide else 255).astype(np.int32)
      out[rows] = (block + 128) // 257 if wide else block
  return Image.fromarray(out, "L")


def _key_alpha(img: Image.Image) -> Image.Image | None:
  """A high-bit grey image's transparent value (a 16-bit greyscale PNG's tRNS, an int in
  info["transparency"]) as a mode-L alpha channel: 0 where a sample equals it, else 255; None
  without one. Compared on the samples, before `_gray8` makes a new image without the info (and
  rounds neighbouring values onto the key's). In blocks of rows, as `_gray8`."""
  key = img.info.get("transparency")
  if img.mode == "F" or isinstance(key, bool) or not isinstance(key, int):
    return None
  w, h = img.size
  alpha = np.empty((h, w), np.uint8)
  for rows in _row_blocks(h, w):
    alpha[rows] = np.where(np.asarray(img.crop((0, rows.start, w, rows.stop))) == key, 0, 255)
  return Image.fromarray(alpha, "L")


def _narrow_rgb_key(img: Image.Image) -> None:
  """PIL reads a 16-bit RGB PNG as 8-bit RGB, each sample's high byte, but keeps its transparent
  colour (tRNS) in 16-bit values, whose low bytes its conversion to RGBA then compared with the
  pixels: another colour was made transparent (key 0x1234 made pixels reading 0x34 so) unless
  each value was a multiple of 257. Set to the 8-bit colour its pixels read as. (Colours that
  differ from it in the low bytes alone read as it too: PIL keeps no more of them.)"""
  key = img.info.get("transparency")
  if img.mode == "RGB" and isinstance(key, tuple) and len(key) == 3:
    img.info["transparency"] = tuple(int(v) >> 8 for v in key)


def _has_alpha(img: Image.Image) -> bool:
  return img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info


def _to_rgb(img: Image.Image, sixteen_bit: bool = False,
            notes: list[str] | None = None) -> np.ndarray:
  """Any PIL mode -> uint8 [h, w, 3] sRGB: an embedded ICC profile is applied (`icc.to_srgb`;
  an unusable one is appended to `notes` as "bad_icc"), then transparency is composited over
  white. `sixteen_bit`: see `_gray8`."""
  icc = img.info.get("icc_profile")
  if img.mode in _HIGH_BIT_MODES or img.mode == "F":
    alpha = _key_alpha(img)
    img = _gray8(img, sixteen_bit)
    if alpha is not None:
      img.putalpha(alpha)  # L -> LA: composited over white below
  if icc:
    img = icc_lib.to_srgb(img, icc, _has_alpha(img), notes if notes is not None else [])
  if _has_alpha(img):
    rgba = np.asarray(img.convert("RGBA"))  # uint8 [h, w, 4]
    rgb = np.empty(rgba.shape[:2] + (3,), np.uint8)  # [h, w, 3]
    for rows in _row_blocks(*rgba.shape[:2]):  # float32 of the whole image: ~3.5 GB at 89.5 MP
      block = rgba[rows].astype(np.float32)  # [rows, w, 4]
      alpha = block[..., 3:] / 255.0
      rgb[rows] = np.clip(np.rint(block[..., :3] * alpha + 255.0 * (1.0 - alpha)), 0, 255)
    return rgb
  if img.mode == "L":
    return np.repeat(np.asarray(img, np.uint8)[..., None], 3, axis=-1)
  return np.asarray(img.convert("RGB"), np.uint8)


def _pillow_has_avif() -> bool:
  """features.check("avif"), without its "Unknown feature" warning on Pillow < 11.2."""
  known = any("avif" in t for t in (features.modules, features.codecs, features.features))
  return known and features.check("avif")


def _missing_decoder(ext: str) -> str | None:
  """The skip reason (a DECODER_FIXES key) if this install cannot decode `ext` files, else None;
  registers pillow-heif's opener for .heic/.heif when it is installed. Only reported for files
  PIL cannot identify: PIL reads by content, so a JPEG/PNG renamed .heic is still read."""
  global _heif_registered
  if ext == ".avif" and not _pillow_has_avif():
    return "needs_pillow_avif"
  if ext in (".heic", ".heif"):
    if _heif_registered is None:
      try:
        import pillow_heif  # pylint: disable=g-import-not-at-top  # optional, not a dependency
        pillow_heif.register_heif_opener()
        _heif_registered = True
      except ImportError:
        _heif_registered = False
      except Exception as e:  # pylint: disable=broad-except  # e.g. OSError: a broken libheif
        log.warning("pillow-heif is installed but cannot be used (%s: %s); .heic/.heif images "
                    "PIL cannot identify are skipped as without it.", type(e).__name__, e)
        _heif_registered = False
    if not _heif_registered:
      return "needs_pillow_heif"
  return None


def load_image(path: str, size: int, max_pixels: int | None = None) -> tuple[np.ndarray, list[str]]:
  """Decodes `path`, applies EXIF orientation, takes the centre square and resizes it to `size`.

  Returns (uint8 [size, size, 3], notes) where notes are oddities that still make an image (a PNG
  named .jpg, decoded by content; smaller than `size`; a centre crop that drops over half of
  it; an ICC profile that cannot be applied, "bad_icc": raw values kept). Pixels tagged with an
  ICC profile are converted to sRGB (`icc.to_srgb`). Raises SkipImage for anything unusable.
  """
  # PIL reads LOAD_TRUNCATED_IMAGES as it opens (a PNG chunk's checksum) as well as loads: off
  # throughout, so that an image decodes alike alone and while other threads decode.
  # Its memory is reserved once opened, until it returns (decode_guards.decode_memory).
  with decode_guards.truncated_images_refused(), decode_guards.decode_memory() as reserve:
    return _decode(path, size, max_pixels, reserve)


def _decode(path: str, size: int, max_pixels: int | None,
            reserve: Callable[[int], None]) -> tuple[np.ndarray, list[str]]:
  """load_image's work, within decode_guards.truncated_images_refused and decode_memory."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in IMAGE_EXTENSIONS:
    raise SkipImage("unsupported_extension", ext or "(none)")
  if not os.path.isfile(path):
    if os.path.islink(path):  # its target moved or deleted (or a loop of links)
      raise SkipImage("broken_link", f"{path} -> {os.readlink(path)}")
    raise SkipImage("unknown_file", path)
  if os.path.getsize(path) == 0:
    raise SkipImage("empty_file", path)
  missing = _missing_decoder(ext)
  # The program's: another thread's open may have set PIL's to its own max_pixels meanwhile.
  max_pixels = decode_guards.program_pixel_limit() if max_pixels is None else max_pixels
  notes = []
  # PIL checks sizes against its limit as it opens and again as it loads (a TIFF's), so the
  # image is loaded under max_pixels too.
  with decode_guards.pixel_limit(max_pixels), _open(path, missing) as img:
    w, h = img.size  # declared size, read from the header before decoding
    if max_pixels and w * h > max_pixels:
      raise SkipImage("too_large", f"{w}x{h} > {max_pixels} pixels")
    if w == 0 or h == 0:
      raise SkipImage("unreadable", f"declared size {w}x{h}")
    if min(w, h) < size:
      notes.append("upscaled")  # blurry at the stored size
    if max(w, h) > 2 * min(w, h):
      notes.append("cropped_over_half")  # the centre square keeps < 1/2: side captions may lie
    # PIL calls a JPEG with a second embedded image (cameras' previews, MPF) "MPO".
    fmt = "JPEG" if img.format == "MPO" else img.format
    if fmt and _FORMATS.get(ext) not in (None, fmt):
      notes.append("extension_mismatch")
    if fmt == "JPEG":
      img.draft("RGB", (size, size))  # decode big JPEGs at a reduced scale, still >= size
    reserve(_peak_bytes(img))  # waits for room beside other threads' decodes (DECODE_MEMORY)
    rgb16 = fmt == "PNG" and any(tile[3] == "RGB;16B" for tile in img.tile)  # gone once loaded
    # A truncated file is skipped even where the program lets PIL pad them (its setting is kept).
    try:
      img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
      raise SkipImage("too_large", str(e)) from None
    except MemoryError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # a decoder's own: TypeError for a
      # TIFF whose StripOffsets tag has another type stopped the whole build
      reason = "truncated" if "truncat" in str(e).lower() or isinstance(e, EOFError) else "corrupt"
      raise SkipImage(reason, _error_text(e)) from None
    if fmt == "PNG":
      _check_png_checksums(path)
    if rgb16:
      _narrow_rgb_key(img)
    sixteen_bit = _sixteen_bit_samples(img)  # before exif_transpose's copy drops the format
    try:
      img = ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF: keep the stored orientation  # pylint: disable=broad-except
      notes.append("bad_exif")
    rgb = _to_rgb(img, sixteen_bit, notes)  # [h, w, 3]
  return resize_square(rgb, size), notes


def _check_png_checksums(path: str) -> None:
  """SkipImage('corrupt') for a PNG whose chunks fail their CRCs. PIL's load checks only those
  before the image data: a copy cut short and padded with zeros (a preallocated download) decoded
  without an error, its lower rows black."""
  try:
    with Image.open(path) as again:
      again.verify()
  except MemoryError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise SkipImage("corrupt", _error_text(e)) from None


def _open(path: str, missing: str | None) -> Image.Image:
  """Image.open(path), or SkipImage naming why not (`missing`: the decoder this install lacks
  for its extension)."""
  try:
    return Image.open(path)
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise SkipImage("too_large", str(e)) from None
  except UnidentifiedImageError as e:
    if missing:  # e.g. a real HEIC without pillow-heif: name the fix
      raise SkipImage(missing, DECODER_FIXES[missing]) from None
    raise SkipImage("unreadable", str(e)) from None
  except MemoryError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # e.g. a KeyError from a broken header
    raise SkipImage("unreadable", _error_text(e)) from None


def _error_text(e: Exception) -> str:
  """PIL's own errors say what is wrong; other types (TypeError, KeyError) are named too."""
  if isinstance(e, (OSError, SyntaxError, ValueError, EOFError)):
    return str(e)
  return f"{type(e).__name__}: {e}"


def _peak_bytes(img: Image.Image) -> int:
  """The bytes load_image holds at most while it decodes the opened `img` (its declared size,
  a JPEG's after draft) into RGB and resizes it: 8 + 4 per band per pixel. Peaks measured
  (ru_maxrss, Pillow 13, 12 MP PNG or TIFF) per pixel: L 8, I;16 10, P and 1 12, RGB and CMYK
  18, RGBA 20 (PIL's decoded image, its RGB conversion, NumPy's copy, resize_square's)."""
  w, h = img.size
  return w * h * (8 + 4 * len(img.getbands()))


def _decode_threads() -> int:
  """Threads decoding in `load_images`: one per usable core, at most 8 (each holds a decoded
  image while it resizes it; together at most decode_guards.DECODE_MEMORY)."""
  return min(8, cpus.usable_cpus())


def load_images(paths: list[str], size: int, max_pixels: int | None = None
                ) -> Iterator[tuple[np.ndarray, list[str]] | SkipImage]:
  """load_image of each of `paths`, in order (a SkipImage in its place), decoded by
  `_decode_threads()` threads (PIL releases the GIL while it decodes and resizes) at most four
  images each ahead of the one taken (memory stays bounded). A folder build reads its images so.
  """
  threads = _decode_threads()
  pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="decode")

  def load(path: str) -> tuple[np.ndarray, list[str]] | SkipImage:
    try:
      return load_image(path, size, max_pixels)
    except SkipImage as e:
      return e

  pending: collections.deque[concurrent.futures.Future] = collections.deque()
  try:
    for path in paths:
      pending.append(pool.submit(load, path))
      if len(pending) > 4 * threads:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
  finally:  # also when the caller stops early: the images not started are not decoded
    pool.shutdown(cancel_futures=True)


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [h, w, 3] -> [size, size, 3] (LANCZOS; a no-op when already that size)."""
  if image.shape[0] == size and image.shape[1] == size:
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS), np.uint8)


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
  """The centre square of uint8 [h, w, 3] (whole pixels: no colour from outside it), resized to
  [size, size, 3]."""
  h, w = image.shape[:2]
  side = min(h, w)
  y0, x0 = (h - side) // 2, (w - side) // 2
  return resize(np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side]), size)


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
  """The folder build's centre square (ImageOps.fit: exactly centred, a half-pixel box when h - w
  is odd, its filter reading pixels beside the box). Kept apart from center_crop_resize so that
  a rebuild stores what earlier builds stored."""
  if rgb.shape[:2] == (size, size):
    return rgb
  return np.asarray(ImageOps.fit(Image.fromarray(rgb), (size, size), Image.LANCZOS), np.uint8)
