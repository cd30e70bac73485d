"""captioned_folder: broken and odd images and caption lines are skipped and counted, never fatal.

How images.load_image decodes odd files: tests/data/test_load_image.py."""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import zlib

import numpy as np
import pytest
from PIL import Image

from llmimg_jax.data import caption_files, captioned_folder, captioned_shapes, pipeline
from llmimg_jax.data import images as images_lib

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
  from llmimg_jax.data.images import SkipImage, load_image
  make_odd_folder(str(tmp_path))
  monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # the calling program's choice
  with pytest.raises(SkipImage, match="truncated"):
    load_image(str(tmp_path / "truncated.jpg"), SIZE)
  assert load_image(str(tmp_path / "rgb.png"), SIZE)[0].shape == (SIZE, SIZE, 3)
  assert ImageFile.LOAD_TRUNCATED_IMAGES is True


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
  again, summary2 = captioned_folder.build_folder(
      builder.builder_config.folder, data_dir=str(builder.data_dir).split("/captioned_folder/")[0], image_size=SIZE)
  assert summary2 == summary
  assert str(again.data_dir) == str(builder.data_dir)


def test_csv_captions(tmp_path):
  Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a.png")
  Image.new("RGB", (8, 8), (4, 5, 6)).save(tmp_path / "b.png")
  with open(tmp_path / "captions.csv", "wb") as f:
    f.write('file,caption\na.png,"first, with comma"\nb.png,second\nb.png,\nc.png,x\n'.encode())
    f.write(b"a.png,bad \xff\n")
  builder, summary = captioned_folder.build_folder(
      str(tmp_path), data_dir=str(tmp_path / "tfds"), image_size=8)
  assert summary["skipped"] == {"empty_caption": 1, "unknown_file": 1, "invalid_utf8": 1}
  source = builder.as_data_source("train")
  caps = {source[i]["file_name"].decode(): [c.decode() for c in source[i]["captions"]]
          for i in range(len(source))}
  assert caps == {"a.png": ["first, with comma"], "b.png": ["second"]}


def test_unquoted_commas_and_every_caption_key_kept(tmp_path):
  for name in ("a.png", "b.png"):
    Image.new("RGB", (8, 8)).save(tmp_path / name)
  (tmp_path / "captions.csv").write_text(
      "file,caption\na.png,a red car, parked next to a blue house\nb.png,plain\n")
  (tmp_path / "captions.jsonl").write_text(json.dumps(
      {"file": "b.png", "caption": "one", "captions": ["one", "two", "three"]}) + "\n")
  skips, notes = caption_files.Skips(), caption_files.Skips()
  caps = caption_files.read_captions(str(tmp_path), skips, notes)
  assert caps == {"a.png": ["a red car, parked next to a blue house"],
                  "b.png": ["one", "two", "three", "plain"]}
  assert not skips.counts and notes.counts == {"unquoted_csv_comma": 1}
  # With the caption column not last, the extra cells cannot be placed: the row is skipped.
  (tmp_path / "captions.csv").write_text("caption,file\na red car, parked,a.png\n")
  skips = caption_files.Skips()
  assert caption_files.read_captions(str(tmp_path), skips) == {
      "b.png": ["one", "two", "three"]}
  assert skips.counts == {"extra_csv_cells": 1}


def test_each_caption_once_and_paths_resolved_against_the_folder(tmp_path):
  """Repeated captions (across lines and files, after stripping) are kept once; a header's case
  does not matter; an absolute path reaching the folder through a symlink is inside it, `..` is
  outside; a CSV line number is the physical line, after a caption spanning two lines."""
  folder = tmp_path / "real"
  folder.mkdir()
  Image.new("RGB", (8, 8)).save(folder / "a.png")
  Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
  os.symlink(folder, tmp_path / "link")
  (folder / "captions.jsonl").write_text("\n".join(json.dumps(e) for e in [
      {"file": "a.png", "caption": "a cat"}, {"file": "a.png", "captions": ["a cat ", "a dog"]},
      {"file": str(folder / "a.png"), "caption": "by real path"},
      {"file": "../outside.png", "caption": "escape"}]) + "\n")
  (folder / "captions.csv").write_text(
      'File Name,Caption\na.png,a dog\na.png,"two\nlines"\nmissing.png,x\n')
  skips = caption_files.Skips()
  caps = caption_files.read_captions(str(tmp_path / "link"), skips)
  assert caps == {"a.png": ["a cat", "a dog", "by real path", "two\nlines"]}
  assert dict(skips.examples) == {"outside_folder": ["captions.jsonl:4 (../outside.png)"],
                                  "unknown_file": ["captions.csv:5 (missing.png)"]}



def test_a_file_name_with_a_nul_character_is_a_skipped_line(tmp_path):
  """A NUL in a file name (JSON's "\\u0000", a NUL byte in a CSV cell) is counted as an unknown
  file like any other name of no file; it was os.path.realpath's "ValueError: embedded null byte",
  which stopped the build without naming the captions file or its line."""
  Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
  (tmp_path / "captions.jsonl").write_text(
      json.dumps({"file": "a\0.png", "caption": "x"}) + "\n"
      + json.dumps({"file": "../b\0.png", "caption": "x"}) + "\n"
      + json.dumps({"file": "a.png", "caption": "a"}) + "\n")
  (tmp_path / "captions.csv").write_bytes(b"file,caption\na\0.png,y\n")
  skips = caption_files.Skips()
  assert caption_files.read_captions(str(tmp_path), skips) == {"a.png": ["a"]}
  assert skips.counts == {"unknown_file": 3}
  assert [e.split()[0] for e in skips.examples["unknown_file"]] == [
      "captions.jsonl:1", "captions.jsonl:2", "captions.csv:2"]

def test_an_image_with_only_blank_captions_is_skipped_once(tmp_path):
  Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
  Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
  (tmp_path / "captions.csv").write_text("file,caption\na.png,a cat\nb.png,  \n")
  _, summary = captioned_folder.build_folder(
      str(tmp_path), data_dir=str(tmp_path / "tfds"), image_size=8)
  assert summary["num_examples"] == 1
  assert summary["skipped"] == {"empty_caption": 1}
  assert (summary["skipped_lines"], summary["skipped_images"]) == (1, 0)


def test_a_caption_that_is_not_text_is_not_called_blank(tmp_path):
  """"caption": 3 (a class id) was skipped as empty_caption, whose fix ("write a caption for
  each image") the user had done; a null caption is still blank."""
  Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
  (tmp_path / "captions.jsonl").write_text(
      '{"file": "a.png", "caption": 3}\n{"file": "a.png", "caption": null}\n'
      '{"file": "a.png", "caption": [" ", 4.5]}\n')
  skips = caption_files.Skips()
  assert caption_files.read_captions(str(tmp_path), skips) == {"a.png": []}
  assert skips.counts == {"caption_not_text": 2, "empty_caption": 1}
  assert skips.examples["empty_caption"] == ["captions.jsonl:2"]


@pytest.mark.parametrize("captions_jsonl, message", [
    ('[{"file": "a.png", "caption": "x"}]', r"one JSON array; captions.jsonl needs one JSON object"),
    ('{"path": "a.png", "caption": "x"}\n', r"no usable image .* needs a file key .* E.g. "
                                            r"captions.jsonl:1"),
    ('{"file": "b.png", "caption": "x"}\n', r"Check the file names .* E.g. captions.jsonl:1 \(b"),
    ('{"file": "a.png", "caption": "x"}\n{"file": "a.png", "caption": "x"}\n',
     r"None of the captioned images could be read \(empty_file, e.g. a.png\)"),
    ("", r"The captions file names no image"),
    ('{"file": "a.png", "caption": 3}\n{"file": "a.png", "captions": [1, {"en": "x"}]}\n',
     r"no usable image .* \(skipped: \{'caption_not_text': 2\}\)\. Captions must be JSON strings, "
     r"e\.g\. \"caption\": \"a red car\" .* E\.g\. captions\.jsonl:1\."),
])
def test_no_usable_image_names_the_main_reason(tmp_path, captions_jsonl, message):
  (tmp_path / "a.png").touch()  # an empty file
  (tmp_path / "captions.jsonl").write_text(captions_jsonl)
  with pytest.raises(captioned_folder.FolderError, match=message):
    captioned_folder.build_folder(str(tmp_path), data_dir=str(tmp_path / "tfds"), image_size=8)


def test_utf16_captions_file_is_named_with_the_fix(tmp_path):
  Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
  (tmp_path / "captions.csv").write_bytes("file,caption\na.png,red\n".encode("utf-16"))
  with pytest.raises(ValueError, match=r"captions.csv is UTF-16 text; save it as UTF-8"):
    captioned_folder.build_folder(str(tmp_path), data_dir=str(tmp_path / "tfds"), image_size=8)


def test_an_edited_folder_keeps_its_build_with_a_warning(tmp_path, caplog):
  """A run resumes on the build it started with; an edit is reported, and deleting the build
  rebuilds it with the new contents. Odd entries (a dangling symlink, a non-UTF-8 name, a TFDS
  data_dir inside the folder) neither crash the fingerprint nor change it between loads."""
  folder = tmp_path / "imgs"
  folder.mkdir()
  Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "a.png")
  (folder / "captions.jsonl").write_text('{"file": "a.png", "caption": "first"}\n')
  os.symlink(folder / "gone.png", folder / "dangling.png")
  (folder / os.fsdecode(b"caf\xe9.png")).write_bytes(b"not an image")
  data = pipeline.default_data_config()
  data.update(name="captioned_folder", folder=str(folder), image_size=8,
              data_dir=str(folder / "tfds"))
  assert [r["captions"] for r in _records(data)] == [["first"]]
  with caplog.at_level("WARNING", logger="llmimg_jax.data.captioned_folder"):
    assert [r["captions"] for r in _records(data)] == [["first"]]
    assert "changed since it was built" not in caplog.text
    with open(folder / "captions.jsonl", "a") as f:
      f.write('{"file": "a.png", "caption": "second"}\n')
    assert [r["captions"] for r in _records(data)] == [["first"]]  # the same build
    assert "changed since it was built" in caplog.text
    # said once per process: evaluate.py loads the source twice (splits, then the split)
    assert [r["captions"] for r in _records(data)] == [["first"]]
    assert caplog.text.count("changed since it was built") == 1
  shutil.rmtree(pipeline.folder_builder(data).data_dir)
  assert [r["captions"] for r in _records(data)] == [["first", "second"]]
  # An image replaced (same name, other pixels) is an edit too.
  caplog.clear()
  Image.new("RGB", (8, 9), (200, 2, 3)).save(folder / "a.png")
  with caplog.at_level("WARNING", logger="llmimg_jax.data.captioned_folder"):
    assert _records(data)[0]["image"][0, 0].tolist() == [1, 2, 3]  # the same build
  assert "changed since it was built" in caplog.text


def _one_image_folder(tmp_path):
  """(a folder of one image captioned "first", a data config reading it at 8px)."""
  folder = tmp_path / "imgs"
  folder.mkdir()
  Image.new("RGB", (8, 8)).save(folder / "a.png")
  (folder / "captions.jsonl").write_text('{"file": "a.png", "caption": "first"}\n')
  data = pipeline.default_data_config()
  data.update(name="captioned_folder", folder=str(folder), image_size=8,
              data_dir=str(tmp_path / "tfds"))
  return folder, data


def test_a_built_folder_is_read_after_the_folder_is_gone(tmp_path, caplog):
  folder, data = _one_image_folder(tmp_path)
  assert [r["captions"] for r in _records(data)] == [["first"]]
  shutil.rmtree(folder)  # archived, or on another machine than the shared data_dir
  with caplog.at_level("WARNING", logger="llmimg_jax.data.captioned_folder"):
    assert [r["captions"] for r in _records(data)] == [["first"]]
  assert "changed since" not in caplog.text
  data.data_dir = str(tmp_path / "other")  # not built there: the missing folder is the error
  with pytest.raises(ValueError, match="existing folder .* no build of it in data.data_dir"):
    pipeline.validate_data_config(data)


def test_a_first_build_has_no_tfds_warning_about_the_missing_build(tmp_path, caplog):
  """Asking TFDS whether a dataset not yet built is prepared warned "Variant folder DIR/1.0.0 has
  no dataset_info.json" (2-4 times in every first prepare / train.py, and before the error of a
  missing folder, as if it were its cause)."""
  folder, data = _one_image_folder(tmp_path)
  with caplog.at_level("WARNING"):
    assert not pipeline.is_built(data)
    assert len(_records(data)) == 1
    assert pipeline.is_built(data)
    data.folder = str(tmp_path / "nope")
    with pytest.raises(ValueError, match="existing folder"):
      pipeline.validate_data_config(data)
  assert "dataset_info.json" not in caplog.text


def test_builders_of_datasets_not_built_leave_no_folder_in_the_temp_dir(tmp_path, monkeypatch):
  """TFDS's DatasetBuilder left an empty tmp*tfds folder in the temp dir (its
  DatasetInfo.initialize_from_bucket) each time a builder of a dataset not yet built was made:
  two per first prepare of a folder, hundreds in /tmp from the tests."""
  temp = tmp_path / "temp"
  temp.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(temp))
  _, data = _one_image_folder(tmp_path)
  assert not pipeline.is_built(data)
  assert len(_records(data)) == 1  # validates, builds, reads
  captioned_shapes.CaptionedShapes(config="tiny_32", data_dir=str(tmp_path / "tfds"))
  assert not list(temp.iterdir())


def _records(data) -> list[dict]:
  source = pipeline.load_source(data)
  return [source[i] for i in range(len(source))]


def test_missing_folder_and_captions_file_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    captioned_folder.build_folder(str(tmp_path / "nope"), str(tmp_path / "tfds"), 8)
  (tmp_path / "imgs").mkdir()
  with pytest.raises(captioned_folder.FolderError, match="No captions file in .*captions.jsonl"):
    captioned_folder.build_folder(str(tmp_path / "imgs"), str(tmp_path / "tfds"), 8)
  # Written on a Mac, whose disk finds Captions.CSV as captions.csv; Linux's does not.
  (tmp_path / "imgs" / "Captions.CSV").write_text("file,caption\n")
  with pytest.raises(captioned_folder.FolderError,
                     match=r"No captions file in .*; rename Captions.CSV to captions.csv \(case "
                           r"matters on this disk\)\.$"):
    captioned_folder.build_folder(str(tmp_path / "imgs"), str(tmp_path / "tfds"), 8)
  # A Hugging Face imagefolder: its metadata.jsonl was not named.
  (tmp_path / "imgs" / "Captions.CSV").unlink()
  (tmp_path / "imgs" / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a cat"}\n')
  with pytest.raises(captioned_folder.FolderError,
                     match=r"No captions file in .*; rename metadata.jsonl \(a Hugging Face "
                           r"imagefolder's\) to captions.jsonl: its file_name and text fields "
                           r"are read\.$"):
    captioned_folder.build_folder(str(tmp_path / "imgs"), str(tmp_path / "tfds"), 8)
  (tmp_path / "imgs" / "metadata.jsonl").rename(tmp_path / "imgs" / "captions.jsonl")
  Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
  _, summary = captioned_folder.build_folder(str(tmp_path / "imgs"), str(tmp_path / "tfds"), 8)
  assert summary["num_examples"] == 1 and not summary["skipped"]


def test_config_validation_reads_the_captions_files_before_any_build(tmp_path):
  """train.py validates the config in seconds: a folder it cannot build from is refused there."""
  folder = tmp_path / "imgs"
  folder.mkdir()
  Image.new("RGB", (8, 8)).save(folder / "a.png")
  data = pipeline.default_data_config()
  data.name, data.folder, data.image_size = "captioned_folder", str(folder), 8
  for captions, match in ((None, "No captions file in"),
                          ("name,desc\na.png,red\n", r"header \['name', 'desc'\] needs a file column"),
                          ("file,caption\na.png,red\n".encode("utf-16"), "UTF-16 text")):
    if captions is not None:
      path = folder / "captions.csv"
      path.write_bytes(captions if isinstance(captions, bytes) else captions.encode())
    with pytest.raises(captioned_folder.FolderError, match=match):
      pipeline.validate_data_config(data)
  (folder / "captions.csv").write_text('"cap\ntion",image,text\n"x\ny",a.png,red\n')  # a quoted
  pipeline.validate_data_config(data)  # line break in the header is one record, as when built
  assert not (tmp_path / "tfds").exists()
  # Once built, the build is what a run uses (resuming warns if the folder changed): no refusal.
  data.data_dir = str(tmp_path / "tfds")
  assert len(pipeline.load_source(data)) == 1
  (folder / "captions.csv").unlink()
  pipeline.validate_data_config(data)


def test_each_image_size_is_its_own_build(tmp_path):
  """One folder loaded at 8px then 16px into one data_dir: two builds, not the 8px one reread."""
  folder = tmp_path / "imgs"
  folder.mkdir()
  image = np.zeros((32, 32, 3), np.uint8)
  image[:, 16:] = (0, 0, 255)  # left half black, right half blue
  Image.fromarray(image).save(folder / "a.png")
  (folder / "captions.jsonl").write_text('{"file": "a.png", "caption": "black and blue"}\n')
  assert (captioned_folder.folder_config(str(folder), 8).name
          != captioned_folder.folder_config(str(folder), 16).name)
  data = pipeline.default_data_config()
  data.update(name="captioned_folder", folder=str(folder), data_dir=str(tmp_path / "tfds"))
  for size in (8, 16):
    data.image_size = size
    (record,) = _records(data)
    assert record["image"].shape == (size, size, 3)
    np.testing.assert_array_equal(record["image"], images_lib.resize_square(image, size))


def test_a_symlink_loop_in_the_folder_is_walked_once(tmp_path):
  """A link back to the folder (or above it) is not followed round and round: the fingerprint
  is the folder's own (two such links would otherwise take 2**40 walks: a hung build)."""
  Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
  (tmp_path / "captions.jsonl").write_text('{"file": "a.png", "caption": "x"}\n')
  (tmp_path / "sub").mkdir()
  plain = captioned_folder.fingerprint(str(tmp_path))
  os.symlink("..", tmp_path / "sub" / "up")
  assert captioned_folder.fingerprint(str(tmp_path)) == plain


def test_captions_jsonl_with_cr_line_endings_is_read_line_by_line(tmp_path):
  """Old Mac line endings (CR only), which captions.csv accepts, made captions.jsonl one
  invalid_json line: every caption lost."""
  for name in ("a.png", "b.png"):
    Image.new("RGB", (8, 8)).save(tmp_path / name)
  (tmp_path / "captions.jsonl").write_bytes(
      b'{"file": "a.png", "caption": "a"}\r{"file": "b.png"\r{"file": "b.png", "caption": "b"}\r')
  skips = caption_files.Skips()
  assert caption_files.read_captions(str(tmp_path), skips) == {"a.png": ["a"], "b.png": ["b"]}
  assert skips.examples == {"invalid_json": ["captions.jsonl:2"]}
