"""captioned_folder: broken and odd images and caption lines are skipped and counted, never fatal.

How images.load_image decodes odd files: tests/data/test_load_image.py. How the captions files are
read: tests/data/test_caption_files.py; a build edited, validated or made at another size:
tests/data/test_captioned_folder_builds.py."""
from __future__ import annotations

import io
import json
import os
import struct
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from llmimg_jax.data import captioned_folder
from llmimg_jax.data.images import SkipImage, load_image

SIZE = 16


def _png_with_declared_size(path: str, w: int, h: int) -> None:
  """A tiny PNG whose header claims w x h pixels (a decompression-bomb look-alike)."""
  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
  data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
  with open(path, "wb") as f:
    f.write(data + chunk(b"IEND", b""))


def make_odd_folder(root: str) -> dict[str, list[str]]:
  """Writes the fixture folder; returns the expected captions of the good images."""
  os.makedirs(root, exist_ok=True)
  p = lambda name: os.path.join(root, name)  # noqa: E731
  Image.new("RGB", (40, 30), (200, 100, 50)).save(p("rgb.png"))
  Image.new("RGBA", (20, 20), (255, 0, 0, 128)).save(p("rgba.png"))
  Image.new("L", (20, 20), 100).save(p("gray.png"))
  Image.new("RGB", (20, 20), (0, 0, 255)).convert("P").save(p("palette.png"))
  Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(p("cmyk.jpg"), quality=95)
  Image.fromarray(np.full((20, 20), 51400, np.uint16)).save(p("deep16.png"))
  with Image.open(p("deep16.png")) as deep:
    assert deep.mode.startswith("I")
  rot = np.zeros((20, 40, 3), np.uint8)  # stored: left half red, right half blue
  rot[:, :20] = (255, 0, 0)
  rot[:, 20:] = (0, 0, 255)
  exif = Image.Exif()
  exif[0x0112] = 6  # orientation: rotate 90 CW to display -> top red, bottom blue
  Image.fromarray(rot).save(p("rotated.jpg"), exif=exif, quality=95)
  Image.new("RGB", (20, 20), (0, 255, 0)).save(p("really_png.jpg"), format="PNG")  # wrong ext
  open(p("empty.png"), "wb").close()
  noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
  Image.fromarray(noise).save(p("full.jpg"))
  with open(p("full.jpg"), "rb") as f:
    data = f.read()
  with open(p("truncated.jpg"), "wb") as f:
    f.write(data[: len(data) // 2])
  os.remove(p("full.jpg"))
  _png_with_declared_size(p("bomb.png"), 30000, 30000)
  with open(p("garbage.png"), "wb") as f:
    f.write(os.urandom(256))
  with open(p("notes.txt"), "w") as f:
    f.write("not an image")
  Image.new("RGB", (20, 20)).save(p("uncaptioned.png"))

  good = {"rgb.png": ["an orange rectangle", "a flat orange image"],
          "rgba.png": ["half-transparent red"], "gray.png": ["grey"],
          "palette.png": ["a blue palette image"], "cmyk.jpg": ["red from cmyk"],
          "deep16.png": ["a 16-bit grey"], "rotated.jpg": ["red above blue"],
          "really_png.jpg": ["green"]}
  lines = [json.dumps({"file": "rgb.png", "caption": "an orange rectangle"}),
           json.dumps({"file_name": "rgb.png", "captions": ["a flat orange image", "  "]})]
  lines += [json.dumps({"file": k, "caption": v[0]}) for k, v in good.items() if k != "rgb.png"]
  lines += [json.dumps({"file": k, "caption": "broken"})
            for k in ("empty.png", "truncated.jpg", "bomb.png", "garbage.png", "notes.txt")]
  lines += ['{"file": "rgb.png", "caption": oops',  # invalid_json
            "[1, 2, 3]",  # invalid_json (not an object)
            json.dumps({"file": "rgb.png"}),  # missing_key
            json.dumps({"caption": "no file"}),  # missing_key
            json.dumps({"file": "rgb.png", "caption": "   "}),  # empty_caption
            json.dumps({"file": "rgb.png", "captions": []}),  # empty_caption
            json.dumps({"file": "nope.png", "caption": "ghost"}),  # unknown_file
            json.dumps({"file": "../outside.png", "caption": "escape"}),  # outside_folder
            '{"file": "rgb.png", "caption": "half an emoji \\ud83d"}',  # invalid_utf8 (surrogate)
            ""]
  with open(p("captions.jsonl"), "wb") as f:
    f.write(b"\xef\xbb\xbf")  # a UTF-8 BOM before the first line (a good one), as Notepad writes
    f.write("\n".join(lines).encode() + b"\n")
    f.write(b'{"file": "rgb.png", "caption": "bad \xff\xfe bytes"}\n')  # invalid_utf8
  return good


EXPECTED_SKIPS = {
    "corrupt": 0, "empty_caption": 2, "empty_file": 1, "invalid_json": 2, "invalid_utf8": 2,
    "missing_key": 2, "no_caption": 1, "outside_folder": 1, "too_large": 1, "truncated": 1,
    "unknown_file": 1,
    "unreadable": 1, "unsupported_extension": 1}


def test_truncated_images_are_skipped_and_pils_setting_is_kept(tmp_path, monkeypatch):
  from PIL import ImageFile
  make_odd_folder(str(tmp_path))
  monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # the calling program's choice
  with pytest.raises(SkipImage, match="truncated"):
    load_image(str(tmp_path / "truncated.jpg"), SIZE)
  assert load_image(str(tmp_path / "rgb.png"), SIZE)[0].shape == (SIZE, SIZE, 3)
  assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_a_png_padded_with_zeros_is_skipped_as_corrupt(tmp_path):
  """A copy cut short and padded with zeros to its size (a preallocated download) decoded without
  an error, the rows past the cut black: PIL's load leaves the image data's CRCs unchecked."""
  gradient = np.tile(np.arange(256, dtype=np.uint8)[:, None, None], (1, 256, 3))
  Image.fromarray(gradient).save(tmp_path / "whole.png")
  data = (tmp_path / "whole.png").read_bytes()
  (tmp_path / "padded.png").write_bytes(data[:len(data) // 2].ljust(len(data), b"\0"))
  with pytest.raises(SkipImage, match=r"corrupt: broken PNG file \(bad header checksum in "
                                      r"b'IDAT'\)"):
    load_image(str(tmp_path / "padded.png"), SIZE)
  assert load_image(str(tmp_path / "whole.png"), SIZE)[0][-1].min() > 200  # its bottom rows


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("odd_folder"))
  good = make_odd_folder(root)
  builder, summary = captioned_folder.build_folder(
      root, data_dir=str(tmp_path_factory.mktemp("tfds")), image_size=SIZE)
  source = builder.as_data_source("train")
  examples = {}
  for i in range(len(source)):
    ex = source[i]
    examples[ex["file_name"].decode()] = ex
  return good, summary, examples, builder


def test_skip_counts_by_reason(built):
  good, summary, examples, _ = built
  expected = {k: v for k, v in EXPECTED_SKIPS.items() if v}
  assert summary["skipped"] == expected, summary
  assert (summary["skipped_lines"], summary["skipped_images"]) == (10, 6)
  assert summary["num_examples"] == len(good) == len(examples)
  assert summary["notes"] == {"extension_mismatch": 1}
  assert set(examples) == set(good)
  # Each skipped caption line's reason comes with its fix, as do some image reasons.
  assert set(summary["fixes"]) == {"empty_caption", "invalid_json", "invalid_utf8", "missing_key",
                                   "outside_folder", "too_large", "unknown_file",
                                   "unsupported_extension"}
  assert "file key (one of" in summary["fixes"]["missing_key"]
  assert ".jpg, .mpo, .pbm," in summary["fixes"]["unsupported_extension"]  # (notes.txt)


def test_captions_merged_and_stored(built):
  good, _, examples, _ = built
  for name, caps in good.items():
    assert [c.decode() for c in examples[name]["captions"]] == caps


def test_images_are_rgb_uint8_with_correct_pixels(built):
  _, _, ex, _ = built
  for e in ex.values():
    assert e["image"].dtype == np.uint8 and e["image"].shape == (SIZE, SIZE, 3)
  center = lambda name: ex[name]["image"][SIZE // 2, SIZE // 2].astype(int)  # noqa: E731
  np.testing.assert_allclose(center("rgb.png"), (200, 100, 50), atol=2)
  np.testing.assert_allclose(center("rgba.png"), (255, 127, 127), atol=2)  # over white
  np.testing.assert_allclose(center("gray.png"), (100, 100, 100), atol=1)
  np.testing.assert_allclose(center("palette.png"), (0, 0, 255), atol=2)
  np.testing.assert_allclose(center("deep16.png"), (200, 200, 200), atol=1)  # 51400 / 257
  np.testing.assert_allclose(center("really_png.jpg"), (0, 255, 0), atol=2)
  cmyk = center("cmyk.jpg")
  assert cmyk[0] > 200 and cmyk[1] < 60 and cmyk[2] < 60, cmyk
  rot = ex["rotated.jpg"]["image"].astype(int)  # EXIF applied: top red, bottom blue
  top, bottom = rot[2, SIZE // 2], rot[SIZE - 3, SIZE // 2]
  assert top[0] > 180 and top[2] < 80, top
  assert bottom[2] > 180 and bottom[0] < 80, bottom


def test_summary_persisted_and_rebuild_is_a_noop(built, tmp_path):
  _, summary, _, builder = built
  data_dir = str(builder.data_dir).split("/captioned_folder/")[0]
  again, summary2 = captioned_folder.build_folder(builder.builder_config.folder,
                                                  data_dir=data_dir, image_size=SIZE)
  assert summary2 == summary
  assert str(again.data_dir) == str(builder.data_dir)


def test_an_image_whose_decoder_fails_with_another_error_is_skipped_as_corrupt(tmp_path):
  """A TIFF whose StripOffsets tag is ASCII, not LONG: PIL's load raised TypeError, which stopped
  the whole folder build with a traceback."""
  tiff = io.BytesIO()
  Image.new("RGB", (32, 24), (200, 30, 30)).save(tiff, format="TIFF")
  data = bytearray(tiff.getvalue())
  ifd = struct.unpack_from("<I", data, 4)[0]
  entries = [ifd + 2 + 12 * i for i in range(struct.unpack_from("<H", data, ifd)[0])]
  strip_offsets = next(e for e in entries if struct.unpack_from("<H", data, e)[0] == 273)
  struct.pack_into("<H", data, strip_offsets + 2, 2)  # its type: ASCII
  (tmp_path / "scan.tif").write_bytes(bytes(data))
  with pytest.raises(SkipImage) as skipped:
    load_image(str(tmp_path / "scan.tif"), SIZE)
  assert str(skipped.value).startswith("corrupt: TypeError: ")


def test_a_build_whose_log_reader_is_gone_completes(tmp_path, monkeypatch):
  """The build's progress bar on a stderr whose pipe's reader was gone (`2>&1 | tee log`, tee
  killed) raised BrokenPipeError at its next draw, ending the build (hours for a big folder)."""
  from tests.data.utils import ReaderGone
  folder = tmp_path / "images"
  folder.mkdir()
  for i in range(3):
    Image.new("RGB", (40, 40), (60 * i, 90, 200)).save(folder / f"{i}.png")
  (folder / "captions.jsonl").write_text(
      "".join(json.dumps({"file_name": f"{i}.png", "text": f"a picture {i}"}) + "\n"
              for i in range(3)))
  monkeypatch.setattr(sys, "stderr", ReaderGone())
  builder, _ = captioned_folder.build_folder(str(folder), data_dir=str(tmp_path / "tfds"),
                                             image_size=SIZE)
  assert len(builder.as_data_source("train")) == 3
