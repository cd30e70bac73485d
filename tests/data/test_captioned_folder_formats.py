"""captioned_folder with colour-managed and newer formats: ICC-tagged images stored as sRGB,
AVIF read, HEIC skipped naming its plugin, and builds by an older decoder flagged."""
from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from llmimg_jax.data import captioned_folder, pipeline
from llmimg_jax.data import images as images_lib
from tests.data.utils import _usage_error, adobe_rgb_icc, folder_argv


def _folder(root, files: dict[str, bool]) -> None:
  """Captions for each file whose value is True."""
  lines = [json.dumps({"file": f, "caption": f"a picture {f}"}) for f, cap in files.items() if cap]
  (root / "captions.jsonl").write_text("\n".join(lines) + "\n")


def _records(builder) -> dict[str, dict]:
  source = builder.as_data_source("train")
  return {source[i]["file_name"].decode(): source[i] for i in range(len(source))}


def test_profiled_images_are_stored_as_srgb_and_bad_profiles_noted(tmp_path):
  raw = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  Image.fromarray(raw).save(tmp_path / "adobe.png", icc_profile=adobe_rgb_icc())
  Image.fromarray(raw).save(tmp_path / "bad.png", icc_profile=b"not a profile" * 20)
  _folder(tmp_path, {"adobe.png": True, "bad.png": True})
  builder, summary = captioned_folder.build_folder(
      str(tmp_path), data_dir=str(tmp_path / "tfds"), image_size=8)
  assert summary["notes"] == {"bad_icc": 1}
  records = _records(builder)
  expected, _ = images_lib.load_image(str(tmp_path / "adobe.png"), 8)
  np.testing.assert_array_equal(records["adobe.png"]["image"], expected)
  assert not np.array_equal(records["adobe.png"]["image"], raw)
  np.testing.assert_array_equal(records["bad.png"]["image"], raw)


def test_heic_without_its_plugin_is_a_skip_reason_naming_the_fix(tmp_path, monkeypatch, caplog):
  """A captioned .heic is skipped as needs_pillow_heif (the summary's fixes and the log say
  `pip install pillow-heif`, the log with the build folder to delete); an uncaptioned .heif is an
  image without a caption, not ignored."""
  monkeypatch.setitem(sys.modules, "pillow_heif", None)  # not importable
  monkeypatch.setattr(images_lib, "_heif_registered", None)
  Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a.png")
  (tmp_path / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 64)
  (tmp_path / "other.heif").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 64)
  files = {"a.png": True, "phone.heic": True}
  if features.check("avif"):
    Image.new("RGB", (8, 8), (200, 100, 50)).save(tmp_path / "new.avif", quality=100)
    files["new.avif"] = True
  _folder(tmp_path, files)
  with caplog.at_level("WARNING", logger="llmimg_jax.data.captioned_folder"):
    builder, summary = captioned_folder.build_folder(
        str(tmp_path), data_dir=str(tmp_path / "tfds"), image_size=8)
  assert summary["skipped"] == {"needs_pillow_heif": 1, "no_caption": 1}
  assert summary["skipped_examples"]["needs_pillow_heif"] == ["phone.heic"]
  assert "pip install pillow-heif" in summary["fixes"]["needs_pillow_heif"]
  assert "pip install pillow-heif" in caplog.text
  # the folder to delete is the finished build, not TFDS's temporary incomplete.* folder
  assert f"then delete {builder.data_dir} to rebuild" in caplog.text
  assert "incomplete." not in caplog.text
  assert sorted(_records(builder)) == sorted(f for f in files if f != "phone.heic")


def _built(folder, tmp_path):
  """(the data config of `folder` at 8px, its builder), built."""
  data = pipeline.default_data_config()
  data.update(name="captioned_folder", folder=str(folder), image_size=8,
              data_dir=str(tmp_path / "tfds"))
  pipeline.load_source(data)
  return data, pipeline.folder_builder(data)


@contextlib.contextmanager
def _rewritten_summary(builder) -> Iterator[dict]:
  """`builder`'s build summary, written back to its metadata.json after the block's edits."""
  meta_path = os.path.join(builder.data_dir, "metadata.json")
  with open(meta_path) as f:
    meta = json.load(f)
  yield meta["summary"]
  with open(meta_path, "w") as f:
    json.dump(meta, f)


def test_a_build_by_an_older_decoder_is_kept_and_flagged(tmp_path, caplog):
  """Builds record images.DECODER_VERSION. One made before ICC profiles were applied (no
  "decoder" in its summary) is still read as built (a run resumes on it), with a warning that
  names what differs and how to rebuild; deleting it rebuilds with the current decoder."""
  folder = tmp_path / "imgs"
  folder.mkdir()
  Image.new("RGB", (8, 8), (200, 100, 50)).save(folder / "a.png", icc_profile=adobe_rgb_icc())
  _folder(folder, {"a.png": True})
  data, builder = _built(folder, tmp_path)
  assert captioned_folder.summary_of(builder)["decoder"] == images_lib.DECODER_VERSION >= 2
  with caplog.at_level("WARNING"):
    pipeline.load_source(data)
  assert "older image decoder" not in caplog.text and "changed since" not in caplog.text
  # Nor TFDS's notice, on every command, that a folder's (always custom) config is used.
  assert "Using custom data configuration" not in caplog.text
  with _rewritten_summary(builder) as summary:
    del summary["decoder"]  # as a build before this version wrote it
  with caplog.at_level("WARNING", logger="llmimg_jax.data.captioned_folder"):
    assert len(pipeline.load_source(data)) == 1
  assert "built by an older image decoder" in caplog.text and "ICC" in caplog.text
  assert f"To rebuild it, delete that build (rm -r {builder.data_dir}); " in caplog.text
  assert captioned_folder.warn_if_changed(pipeline.folder_builder(data))
  # The older decoder's warning does not hide the other: the folder changed since its build.
  Image.new("RGB", (8, 8)).save(folder / "b.png")
  caplog.clear()
  with caplog.at_level("WARNING", logger="llmimg_jax.data.captioned_folder"):
    assert captioned_folder.warn_if_changed(pipeline.folder_builder(data))
  assert "older image decoder" in caplog.text and "changed since" in caplog.text



def test_an_older_decoders_warning_names_the_changes_since_its_version():
  assert "ICC" in captioned_folder._decoder_changes(1)
  assert "tRNS" in captioned_folder._decoder_changes(1)
  assert "ICC" not in captioned_folder._decoder_changes(2)
  assert "tRNS" in captioned_folder._decoder_changes(2)
  assert max(captioned_folder._DECODER_CHANGES) == images_lib.DECODER_VERSION

def test_a_folder_of_only_heic_fails_naming_the_plugin(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "pillow_heif", None)
  monkeypatch.setattr(images_lib, "_heif_registered", None)
  (tmp_path / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 64)
  _folder(tmp_path, {"phone.heic": True})
  with pytest.raises(captioned_folder.FolderError,
                     match=r"\(needs_pillow_heif, e.g. phone.heic\)\. .*pip install pillow-heif"):
    captioned_folder.build_folder(str(tmp_path), data_dir=str(tmp_path / "tfds"), image_size=8)


def test_the_fingerprint_counts_avif_and_heic_files(tmp_path):
  """A .avif/.heic added to a built folder is an edit (warn_if_changed), as a .png is."""
  Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
  _folder(tmp_path, {"a.png": True})
  before = captioned_folder.fingerprint(str(tmp_path))
  (tmp_path / "b.heic").write_bytes(b"\0" * 32)
  after_heic = captioned_folder.fingerprint(str(tmp_path))
  (tmp_path / "c.avif").write_bytes(b"\0" * 32)
  assert len({before, after_heic, captioned_folder.fingerprint(str(tmp_path))}) == 3


def _as_built_by_decoder(builder, decoder: int, unread: Path) -> None:
  """Rewrites `builder`'s summary as an older decoder's build wrote it: fingerprint version 1
  (no key), taken without the file `unread`, which that decoder did not read."""
  with _rewritten_summary(builder) as summary:
    del summary["fingerprint_version"]
    if decoder == 1:
      del summary["decoder"]  # decoder 1 wrote none
    else:
      summary["decoder"] = decoder
    aside = unread.parent.parent / unread.name
    unread.rename(aside)
    summary["fingerprint"] = captioned_folder.fingerprint(str(unread.parent), version=1)
    aside.rename(unread)


def test_an_older_build_of_an_unchanged_folder_with_heic_files_is_not_called_changed(
    tmp_path, caplog):
  """A build by decoder 1 fingerprinted no .avif/.heic/.heif file (not image files then): the
  same folder, unchanged, is not reported as changed since (only as built by an older decoder)."""
  folder = tmp_path / "imgs"
  folder.mkdir()
  Image.new("RGB", (8, 8), (200, 100, 50)).save(folder / "a.png")
  (folder / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 64)
  _folder(folder, {"a.png": True})
  data, builder = _built(folder, tmp_path)
  _as_built_by_decoder(builder, 1, folder / "phone.heic")
  with caplog.at_level("WARNING", logger="llmimg_jax.data.captioned_folder"):
    captioned_folder.warn_if_changed(pipeline.folder_builder(data))
  assert "older image decoder" in caplog.text and "changed since" not in caplog.text


def test_images_over_the_pixel_limit_are_skipped_naming_data_max_pixels(tmp_path):
  """A 108 or 200 MP phone photo, a panorama: over PIL's 89.5 MP limit, skipped as too_large
  with no fix, though data.max_pixels admits them."""
  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  header = chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 9000, 8, 2, 0, 0, 0))  # 108 MP
  (tmp_path / "phone.png").write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b""))
  _folder(tmp_path, {"phone.png": True})
  with pytest.raises(captioned_folder.FolderError,
                     match=r"\(too_large, e.g. phone.png\)\. .*set data.max_pixels"):
    captioned_folder.build_folder(str(tmp_path), data_dir=str(tmp_path / "tfds"), image_size=8)
  Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
  _folder(tmp_path, {"phone.png": True, "a.png": True})
  _, summary = captioned_folder.build_folder(
      str(tmp_path), data_dir=str(tmp_path / "tfds2"), image_size=8)
  assert summary["skipped"] == {"too_large": 1}
  assert "--config.data.max_pixels=" in summary["fixes"]["too_large"]


def test_jpe_apng_and_mpo_files_are_read_first_frame_first(tmp_path):
  """.jpe (JPEG), .apng (animated PNG) and .mpo (a 3D camera's two JPEG views) are files Pillow
  reads; they were skipped as unsupported_extension (and uncaptioned ones not counted). Of the
  animated and multi-picture ones the first frame is stored, as of a GIF."""
  red, blue, green = (Image.new("RGB", (8, 8), c) for c in ((250, 0, 0), (0, 0, 250), (0, 250, 0)))
  red.save(tmp_path / "a.jpe", quality=100)
  red.save(tmp_path / "b.apng", save_all=True, append_images=[blue], duration=100)
  green.save(tmp_path / "c.mpo", save_all=True, append_images=[blue])
  red.save(tmp_path / "d.gif", save_all=True, append_images=[blue], duration=100)
  red.save(tmp_path / "uncaptioned.jpe")
  _folder(tmp_path, {"a.jpe": True, "b.apng": True, "c.mpo": True, "d.gif": True})
  builder, summary = captioned_folder.build_folder(
      str(tmp_path), data_dir=str(tmp_path / "tfds"), image_size=8)
  assert summary["skipped"] == {"no_caption": 1}
  assert summary["skipped_examples"]["no_caption"] == ["uncaptioned.jpe"]
  assert summary["notes"] == {}  # no extension_mismatch: .apng is PNG, .mpo JPEG
  records = _records(builder)
  for name, colour in (("a.jpe", red), ("b.apng", red), ("c.mpo", green), ("d.gif", red)):
    np.testing.assert_allclose(records[name]["image"], np.asarray(colour), atol=4, err_msg=name)


def test_an_older_build_of_an_unchanged_folder_with_apng_files_is_not_called_changed(
    tmp_path, caplog):
  """Decoder 3 fingerprinted no .jpe/.apng/.mpo file (it did not read them): its build of a
  folder holding some, unchanged, is flagged as by an older decoder, not as changed since."""
  folder = tmp_path / "imgs"
  folder.mkdir()
  Image.new("RGB", (8, 8), (200, 100, 50)).save(folder / "a.png")
  Image.new("RGB", (8, 8)).save(folder / "b.apng")
  (folder / ".Trash-1000").mkdir()  # hashed by decoder 3's builds (fingerprint version 1)
  Image.new("RGB", (8, 8)).save(folder / ".Trash-1000" / "old.png")
  _folder(folder, {"a.png": True})
  data, builder = _built(folder, tmp_path)
  _as_built_by_decoder(builder, 3, folder / "b.apng")
  with caplog.at_level("WARNING", logger="llmimg_jax.data.captioned_folder"):
    assert captioned_folder.warn_if_changed(pipeline.folder_builder(data))
  assert "(version 3, now" in caplog.text
  assert ".jpe, .apng and .mpo images are now read" in caplog.text
  assert "changed since" not in caplog.text


def test_a_build_by_an_older_captions_csv_reader_is_kept_and_flagged(tmp_path, caplog):
  """Builds record caption_files.READER_VERSION. One of a folder with a captions.csv made before
  list cells were read as captions is read as built, with a warning naming the change; one with
  only a captions.jsonl (which that reader reads as before) is not flagged."""
  for caption_file in ("captions.csv", "captions.jsonl"):
    folder = tmp_path / caption_file.replace(".", "_") / "imgs"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 100, 50)).save(folder / "a.png")
    if caption_file == "captions.csv":
      (folder / caption_file).write_text("file,caption\na.png,\"['a cat', 'a dog']\"\n")
    else:
      (folder / caption_file).write_text('{"file": "a.png", "caption": "a cat"}\n')
    data, builder = _built(folder, folder.parent)
    assert captioned_folder.summary_of(builder)["captions_reader"] == 3
    with _rewritten_summary(builder) as summary:
      del summary["captions_reader"]  # as a build before this version wrote it
    caplog.clear()
    with caplog.at_level("WARNING", logger="llmimg_jax.data.captioned_folder"):
      flagged = captioned_folder.warn_if_changed(pipeline.folder_builder(data))
    assert flagged == (caption_file == "captions.csv")
    assert ("older captions.csv reader (version 1, now 3: a cell holding a list of captions"
            in caplog.text) == flagged, caplog.text
    assert "changed since" not in caplog.text


def test_prepare_builds_with_the_max_pixels_train_py_reads(tmp_path, monkeypatch, capsys):
  """The too_large fix names data.max_pixels, for which prepare had no flag: its build skipped
  those images, and train.py with data.max_pixels set read (and built) another one."""
  from llmimg_jax.data import prepare  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a stand-in for PIL's 89.5 MP
  Image.new("RGB", (40, 40), "red").save(tmp_path / "big.png")  # 1,600 pixels
  Image.new("RGB", (8, 8), "blue").save(tmp_path / "small.png")
  data = pipeline.default_data_config()
  data.update(name="captioned_folder", folder=str(tmp_path), data_dir=str(tmp_path / "tfds"),
              image_size=8, max_pixels=2000)
  flags = folder_argv(tmp_path, data.data_dir)
  _folder(tmp_path, {"big.png": True})
  # No usable image: the fix names this command's flag.
  assert ("set --max_pixels above their pixel count (train.py --config.data.max_pixels="
          in _usage_error(capsys, flags))
  _folder(tmp_path, {"big.png": True, "small.png": True})
  report = prepare.main([*flags, "--max_pixels", "2000"])
  assert (report["num_examples"], report["summary"]["skipped"]) == (2, {})
  assert pipeline.is_built(data)
  for argv, error in [
      ([*flags, "--max_pixels", "-1"], "--max_pixels=-1 must be >= 0 (0 = PIL's limit)."),
      (["--dataset", "captioned_shapes/tiny_32", "--max_pixels", "9"],
       "--max_pixels only applies to --dataset captioned_folder")]:
    assert error in _usage_error(capsys, argv)
