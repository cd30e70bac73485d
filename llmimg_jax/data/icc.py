"""Embedded ICC colour profiles -> sRGB (PIL.ImageCms, i.e. LittleCMS).

An image tagged Adobe RGB, Display P3 or a CMYK press profile holds values in that space; stored
raw they look washed out or shifted. `to_srgb` converts them as a colour-managed viewer shows
them. A profile LittleCMS cannot read, or one of another colour space than the pixels, keeps the
raw values (the image is still used) and is noted "bad_icc".
"""
from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image, ImageCms

# Relative colorimetric with black-point compensation (Photoshop's "Convert to sRGB" default):
# colours inside sRGB keep their exact values, only out-of-gamut ones are clipped, as a
# colour-managed browser shows them. Perceptual would differ only for LUT profiles (CMYK), whose
# vendor-specific gamut compression would also shift in-gamut colours; matrix RGB/grey
# profiles (Adobe RGB, Display P3) have no perceptual table and use colorimetric anyway.
INTENT = ImageCms.Intent.RELATIVE_COLORIMETRIC
FLAGS = ImageCms.Flags.BLACKPOINTCOMPENSATION
# A profile's colour space -> the PIL modes whose pixels it can describe.
_MODES = {"RGB": ("RGB", "RGBA", "RGBX", "RGBa", "P", "PA"), "GRAY": ("L", "LA", "La", "1"),
          "CMYK": ("CMYK",)}
_SRGB = ImageCms.createProfile("sRGB")


class BadProfile(ValueError):
  """An embedded profile that cannot convert the image's pixels."""


@functools.lru_cache(maxsize=16)
def _profile(icc: bytes) -> tuple[ImageCms.ImageCmsProfile, str,
                                  ImageCms.ImageCmsTransform | None]:
  """(`icc`'s profile, its colour space, for an RGB profile its RGB -> sRGB transform: None for
  other spaces and for sRGB), cached: the transform is built once, for the sRGB test and for
  converting RGB pixels. Raises BadProfile."""
  try:
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    space = profile.profile.xcolor_space.strip()
  except (OSError, ImageCms.PyCMSError, TypeError, ValueError) as e:
    raise BadProfile(f"unreadable profile: {e}") from None
  if space != "RGB":
    return profile, space, None
  try:
    rgb = ImageCms.buildTransform(profile, _SRGB, "RGB", "RGB", INTENT, flags=FLAGS)
  except (ImageCms.PyCMSError, OSError, ValueError) as e:
    raise BadProfile(f"cannot build transform: {e}") from None
  # sRGB already (cameras', the web's default): stored as-is.
  # Told by what it does, not its name: GIMP's "Linear sRGB" is named sRGB but is linear.
  return profile, space, None if _is_identity(rgb) else rgb


@functools.lru_cache(maxsize=16)
def _transform(icc: bytes, in_mode: str, out_mode: str) -> ImageCms.ImageCmsTransform | None:
  """The cached transform from `icc` to sRGB (a folder's images often share one profile); None
  for an sRGB profile. Raises BadProfile."""
  profile, space, rgb = _profile(icc)
  if space == "RGB" and rgb is None:
    return None  # sRGB already
  if in_mode not in _MODES.get(space, ()):
    raise BadProfile(f"a {space} profile on {in_mode} pixels")
  if (in_mode, out_mode) == ("RGB", "RGB"):
    return rgb
  try:
    return ImageCms.buildTransform(profile, _SRGB, in_mode, out_mode, INTENT, flags=FLAGS)
  except (ImageCms.PyCMSError, OSError, ValueError) as e:
    raise BadProfile(f"cannot build transform: {e}") from None


_PROBE = np.stack(np.meshgrid(*[np.arange(0, 256, 15, dtype=np.uint8)] * 3, indexing="ij"), -1)


def _is_identity(transform: ImageCms.ImageCmsTransform) -> bool:
  """Whether an RGB -> sRGB transform leaves a grid of colours within rounding (1) of themselves."""
  probe = _PROBE.reshape(1, -1, 3)  # [1, 18**3, 3]
  out = np.asarray(ImageCms.applyTransform(Image.fromarray(probe), transform))
  return int(np.abs(out.astype(np.int16) - probe).max()) <= 1


def to_srgb(img: Image.Image, icc: bytes, has_alpha: bool, notes: list[str]) -> Image.Image:
  """`img` (8-bit, any mode; `has_alpha`: it carries transparency) described by the ICC profile
  `icc` -> mode RGB, or RGBA when `has_alpha`, in sRGB. An unusable profile returns `img`
  unchanged and appends "bad_icc" to `notes`."""
  space = next((s for s, modes in _MODES.items() if img.mode in modes), None)
  if space is None:  # e.g. YCbCr, LAB: no ICC path; keep the raw values
    notes.append("bad_icc")
    return img
  in_mode = _MODES[space][0]
  out_mode = "RGBA" if has_alpha and space == "RGB" else "RGB"
  try:
    transform = _transform(bytes(icc), out_mode if space == "RGB" else in_mode, out_mode)
  except BadProfile:
    notes.append("bad_icc")
    return img
  if transform is None:
    return img
  if space == "RGB":  # RGBA -> RGBA: ImageCms copies the alpha channel through
    return ImageCms.applyTransform(img.convert(out_mode), transform)
  rgb = ImageCms.applyTransform(img.convert(in_mode), transform)
  if has_alpha:  # grey + alpha: the profile converts the grey; the alpha is put back
    rgb.putalpha(img.convert("RGBA").getchannel("A"))
  return rgb
