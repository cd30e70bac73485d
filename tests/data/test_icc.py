"""icc.to_srgb's transforms: each profile's built once, however many images and modes use it."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageCms

from llmimg_jax.data import icc as icc_lib
from tests.data.utils import adobe_rgb_icc


def test_each_profile_builds_its_transform_once(monkeypatch):
  """The sRGB test and the conversion of RGB pixels share one transform (it was built twice per
  profile); RGBA pixels need their own, built once too."""
  for cached in vars(icc_lib).values():
    if hasattr(cached, "cache_clear"):
      cached.cache_clear()
  built = []
  build = ImageCms.buildTransform
  monkeypatch.setattr(ImageCms, "buildTransform",
                      lambda *a, **k: built.append(a[2:4]) or build(*a, **k))
  icc = adobe_rgb_icc()
  rgb = Image.new("RGB", (8, 8), (200, 100, 50))
  rgba = Image.new("RGBA", (8, 8), (200, 100, 50, 128))
  srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
  for _ in range(3):
    notes = []
    out = icc_lib.to_srgb(rgb, icc, False, notes)
    assert notes == [] and out.mode == "RGB"
    assert not np.array_equal(np.asarray(out), np.asarray(rgb))  # Adobe RGB: converted
    assert icc_lib.to_srgb(rgba, icc, True, notes).mode == "RGBA"
    assert icc_lib.to_srgb(rgb, srgb, False, notes) is rgb and notes == []  # sRGB: as stored
  assert built == [("RGB", "RGB"), ("RGBA", "RGBA"), ("RGB", "RGB")]
