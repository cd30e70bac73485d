"""images.load_image's optional decoders: AVIF (a Pillow built with it) and HEIC/HEIF (the
pillow-heif plugin, not a dependency): read where installed, skipped naming the fix where not,
and files of other formats under their extensions read by content."""
from __future__ import annotations

import sys
import types
import warnings

import numpy as np
import pytest
from PIL import Image, features

from llmimg_jax.data import images as images_lib


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow is built without AVIF")
def test_avif_is_read_when_pillow_has_it(tmp_path):
  Image.new("RGB", (8, 8), (200, 100, 50)).save(tmp_path / "a.avif", quality=100)
  rgb, notes = images_lib.load_image(str(tmp_path / "a.avif"), 8)
  assert notes == []
  np.testing.assert_allclose(rgb.reshape(-1, 3).mean(0), (200, 100, 50), atol=4)


def test_heic_without_pillow_heif_is_skipped_naming_the_fix(tmp_path, monkeypatch):
  """HEIC/HEIF need the pillow-heif plugin (not a dependency): without it the skip says so."""
  monkeypatch.setitem(sys.modules, "pillow_heif", None)  # not importable
  monkeypatch.setattr(images_lib, "_heif_registered", None)  # checked afresh
  (tmp_path / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 64)
  with pytest.raises(images_lib.SkipImage, match=r"needs_pillow_heif.*pip install pillow-heif"):
    images_lib.load_image(str(tmp_path / "phone.heic"), 8)


def test_pillow_heif_is_registered_once_when_installed(tmp_path, monkeypatch):
  """With pillow-heif importable its opener is registered (once) and .heic files are opened by
  PIL: this stand-in plugin registers nothing, so the file is unreadable, not needs_pillow_heif."""
  calls = []
  plugin = types.ModuleType("pillow_heif")
  plugin.register_heif_opener = lambda: calls.append(1)
  monkeypatch.setitem(sys.modules, "pillow_heif", plugin)
  monkeypatch.setattr(images_lib, "_heif_registered", None)
  (tmp_path / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 64)
  for _ in range(2):
    with pytest.raises(images_lib.SkipImage, match="unreadable"):
      images_lib.load_image(str(tmp_path / "phone.heic"), 8)
  assert calls == [1]


def test_avif_on_a_pillow_that_does_not_know_it_is_skipped_without_a_warning(tmp_path,
                                                                            monkeypatch):
  """Pillow < 11.2 has no "avif" feature: features.check warned "Unknown feature 'avif'"."""
  from PIL import features as pil_features
  for table in (pil_features.modules, pil_features.codecs, pil_features.features):
    monkeypatch.delitem(table, "avif", raising=False)
  (tmp_path / "a.avif").write_bytes(b"\0\0\0\x1cftypavif" + b"\0" * 64)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    with pytest.raises(images_lib.SkipImage, match="needs_pillow_avif"):
      images_lib.load_image(str(tmp_path / "a.avif"), 8)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_heic_that_is_really_a_jpeg_or_png_is_read_without_pillow_heif(tmp_path, monkeypatch,
                                                                         fmt):
  """PIL identifies images by content: a JPEG/PNG renamed .heic is read (noted as a mismatch),
  not skipped as needs_pillow_heif."""
  monkeypatch.setitem(sys.modules, "pillow_heif", None)  # not importable
  monkeypatch.setattr(images_lib, "_heif_registered", None)
  path = tmp_path / "renamed.heic"
  Image.new("RGB", (8, 8), (200, 100, 50)).save(path, fmt, quality=100)
  rgb, notes = images_lib.load_image(str(path), 8)
  assert notes == ["extension_mismatch"]
  np.testing.assert_allclose(rgb.reshape(-1, 3).mean(0), (200, 100, 50), atol=2)


def test_an_avif_that_is_really_a_png_is_read_without_avif_support(tmp_path, monkeypatch):
  monkeypatch.setattr(images_lib, "_pillow_has_avif", lambda: False)
  Image.new("RGB", (8, 8), (200, 100, 50)).save(tmp_path / "renamed.avif", "PNG")
  rgb, notes = images_lib.load_image(str(tmp_path / "renamed.avif"), 8)
  assert notes == ["extension_mismatch"]
  np.testing.assert_array_equal(rgb, np.full((8, 8, 3), (200, 100, 50)))
  (tmp_path / "real.avif").write_bytes(b"\0\0\0\x1cftypavif" + b"\0" * 64)
  with pytest.raises(images_lib.SkipImage, match="needs_pillow_avif"):
    images_lib.load_image(str(tmp_path / "real.avif"), 8)


def test_a_pillow_heif_that_fails_to_import_is_not_available(tmp_path, monkeypatch, caplog):
  """An installed pillow-heif whose import fails otherwise than ImportError (an OSError from a
  broken shared library) does not crash the build: HEIC files are skipped as without it, and a
  warning names the error."""
  import builtins
  real_import = builtins.__import__

  def broken_import(name, *args, **kwargs):
    if name == "pillow_heif":
      raise OSError("libheif.so.1: cannot open shared object file")
    return real_import(name, *args, **kwargs)

  monkeypatch.delitem(sys.modules, "pillow_heif", raising=False)
  monkeypatch.setattr(builtins, "__import__", broken_import)
  monkeypatch.setattr(images_lib, "_heif_registered", None)
  (tmp_path / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 64)
  with caplog.at_level("WARNING", logger="llmimg_jax.data.images"):
    for _ in range(2):
      with pytest.raises(images_lib.SkipImage, match="needs_pillow_heif"):
        images_lib.load_image(str(tmp_path / "phone.heic"), 8)
  warned = [r for r in caplog.records if "pillow-heif" in r.getMessage()]
  assert len(warned) == 1 and "OSError: libheif.so.1" in warned[0].getMessage()
