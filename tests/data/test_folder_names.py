"""captioned_folder: names in a captions file match the names on disk up to Unicode form (and
case, where the disk ignores it)."""
from __future__ import annotations

import json
import os
import unicodedata

import pytest
from PIL import Image

from llmimg_jax.data import caption_files, captioned_folder, folder_names

NFC = unicodedata.normalize("NFC", "café.png")
NFD = unicodedata.normalize("NFD", "café.png")


def _write_jsonl(folder, entries: list[dict]) -> None:
  (folder / "captions.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries),
                                         encoding="utf-8")


@pytest.mark.parametrize("on_disk, in_captions", [(NFD, NFC), (NFC, NFD)])
def test_a_name_in_the_other_unicode_form_is_the_file_on_disk(tmp_path, on_disk, in_captions):
  Image.new("RGB", (8, 8), (9, 8, 7)).save(tmp_path / on_disk)
  _write_jsonl(tmp_path, [{"file": in_captions, "caption": "a cafe"},
                          {"file": on_disk, "caption": "a coffee shop"},
                          {"file": "nope.png", "caption": "still unknown"}])
  builder, summary = captioned_folder.build_folder(
      str(tmp_path), data_dir=str(tmp_path / "tfds"), image_size=8)
  assert summary["num_examples"] == 1
  assert summary["skipped_examples"] == {"unknown_file": ["captions.jsonl:3 (nope.png)"]}
  example = builder.as_data_source("train")[0]
  assert example["file_name"].decode() == on_disk  # the name on disk, both lines merged
  assert [c.decode() for c in example["captions"]] == ["a cafe", "a coffee shop"]


def test_a_directory_name_in_the_other_unicode_form_is_matched(tmp_path):
  sub = unicodedata.normalize("NFD", "été")
  (tmp_path / sub).mkdir()
  Image.new("RGB", (8, 8)).save(tmp_path / sub / NFD)
  (tmp_path / "captions.csv").write_text(
      f"file,caption\n{unicodedata.normalize('NFC', 'été')}/{NFC},summer\n", encoding="utf-8")
  skips = caption_files.Skips()
  assert caption_files.read_captions(str(tmp_path), skips) == {
      os.path.join(sub, NFD): ["summer"]}
  assert not skips.counts


def test_two_files_with_one_normalised_name_are_each_their_own_name(tmp_path):
  """Two files whose names differ in Unicode form only: a caption spelled as one of them names
  that file (as before names were normalised); one spelled in neither form is refused."""
  Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / NFC)
  Image.new("RGB", (8, 8), (200, 9, 9)).save(tmp_path / NFD)
  if len(os.listdir(tmp_path)) < 2:
    pytest.skip("this file system stores one name per normalised form")
  _write_jsonl(tmp_path, [{"file": NFC, "caption": "grey"}, {"file": NFD, "caption": "red"}])
  skips = caption_files.Skips()
  assert caption_files.read_captions(str(tmp_path), skips) == {NFC: ["grey"], NFD: ["red"]}
  mixed = "e\u0301t\xe9.png"  # été in neither NFC nor NFD
  for form in ("NFC", "NFD"):
    Image.new("RGB", (8, 8)).save(tmp_path / unicodedata.normalize(form, mixed))
  _write_jsonl(tmp_path, [{"file": mixed, "caption": "which one?"}])
  with pytest.raises(captioned_folder.FolderError,
                     match=r"captions.jsonl:1 names .* 2 entries with that name in different "
                           r"Unicode forms: 'e\\u0301te\\u0301.png', '\\xe9t\\xe9.png'. Rename "
                           r"or remove"):
    captioned_folder.build_folder(str(tmp_path), data_dir=str(tmp_path / "tfds"), image_size=8)


def test_macos_appledouble_files_are_not_uncaptioned_images(tmp_path):
  """macOS writes a `._NAME` file (AppleDouble: the resource fork, not an image) beside every
  file it copies to a FAT/exFAT drive or a network share; `._a.jpg` was counted as a skipped
  uncaptioned image (the build's warning: half of a copied folder uncaptioned)."""
  Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
  Image.new("RGB", (8, 8)).save(tmp_path / "b.jpg")
  (tmp_path / "._a.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(78))
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "._c.png").write_bytes(b"\x00\x05\x16\x07" + bytes(78))
  (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
  _write_jsonl(tmp_path, [{"file": "a.jpg", "caption": "a"}])
  _, summary = captioned_folder.build_folder(
      str(tmp_path), data_dir=str(tmp_path / "tfds"), image_size=8)
  assert summary["num_examples"] == 1
  assert summary["skipped_examples"] == {"no_caption": ["b.jpg"]}


def test_images_in_hidden_folders_are_not_uncaptioned_images(tmp_path, monkeypatch):
  """A USB drive's root holds the images a desktop deleted (`.Trash-1000/files/`, macOS's
  `.Trashes/501/`): each was counted as a skipped uncaptioned image in the build's summary. An
  image in a hidden folder that the captions name is still read. The build parses the captions
  once (it parsed them a second time for its fingerprint, which then needs them)."""
  Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
  Image.new("RGB", (8, 8)).save(tmp_path / "b.jpg")
  for sub in (".Trash-1000/files", ".Trashes/501", "sub/.thumbnails", ".kept"):
    (tmp_path / sub).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / sub / "old.jpg")
  _write_jsonl(tmp_path, [{"file": "a.jpg", "caption": "a"},
                          {"file": ".kept/old.jpg", "caption": "kept"},
                          {"file": "gone.jpg", "caption": "unknown"}])
  parses = []
  read_captions = captioned_folder.read_captions
  monkeypatch.setattr(captioned_folder, "read_captions",
                      lambda *args: parses.append(args[0]) or read_captions(*args))
  _, summary = captioned_folder.build_folder(
      str(tmp_path), data_dir=str(tmp_path / "tfds"), image_size=8)
  assert parses == [str(tmp_path)]
  assert summary["num_examples"] == 2
  assert summary["skipped_examples"] == {"no_caption": ["b.jpg"],
                                         "unknown_file": ["captions.jsonl:3 (gone.jpg)"]}
  assert summary["fingerprint"] == captioned_folder.fingerprint(str(tmp_path))


def test_only_files_a_build_reads_make_its_folder_changed(tmp_path, caplog):
  """The fingerprint hashed every image file, though a build lists none in a hidden folder and
  no `._NAME` file: emptying a drive's `.Trash-1000/`, a new `.thumbnails/` image or macOS
  rewriting `._a.jpg` made loading the build warn that the folder changed (delete the build; a
  run on it cannot resume). A change to an image there that the captions name is still one, as
  is a new uncaptioned image the build would list."""
  Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
  (tmp_path / "._a.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(78))
  for sub in (".Trash-1000/files", "sub/.thumbnails", ".kept"):
    (tmp_path / sub).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / sub / "old.jpg")
  _write_jsonl(tmp_path, [{"file": "a.jpg", "caption": "a"},
                          {"file": ".kept/old.jpg", "caption": "kept"}])

  def changed() -> bool:
    builder, summary = captioned_folder.build_folder(  # built once, then found
        str(tmp_path), data_dir=str(tmp_path / "tfds"), image_size=8)
    assert summary["num_examples"] == 2
    return captioned_folder.warn_if_changed(builder)
  assert not changed()
  (tmp_path / ".Trash-1000" / "files" / "old.jpg").unlink()
  Image.new("RGB", (9, 9)).save(tmp_path / "sub" / ".thumbnails" / "new.png")
  (tmp_path / "._a.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(4000))
  with caplog.at_level("WARNING", logger="llmimg_jax.data.captioned_folder"):
    assert not changed()
  assert "changed since" not in caplog.text
  Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "b.jpg")
  assert changed()
  (tmp_path / "sub" / "b.jpg").unlink()
  assert not changed()
  Image.new("RGB", (9, 9)).save(tmp_path / ".kept" / "old.jpg")
  assert changed()
  # A build before fingerprint_version 2 hashed every image file: unchanged since, it is not
  # "changed" (its version read from its summary).
  builder, _ = captioned_folder.build_folder(
      str(tmp_path), data_dir=str(tmp_path / "tfds"), image_size=8)
  meta_path = os.path.join(builder.data_dir, "metadata.json")
  with open(meta_path) as f:
    meta = json.load(f)
  del meta["summary"]["fingerprint_version"]
  meta["summary"]["fingerprint"] = captioned_folder.fingerprint(str(tmp_path), version=1)
  with open(meta_path, "w") as f:
    json.dump(meta, f)
  assert not changed()


def test_uncaptioned_images_in_a_linked_folder_are_counted(tmp_path):
  """A linked sub-folder is read (captions name its files; the fingerprint walks it), but its
  uncaptioned images were not counted: left out without a word. A link to a folder inside the
  folder is walked too, and its captioned images (by their other name) are not uncaptioned."""
  folder, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
  (folder / "sub").mkdir(parents=True)
  elsewhere.mkdir()
  for path in (folder / "a.png", folder / "sub" / "c.png", elsewhere / "e.png",
               elsewhere / "uncaptioned.png"):
    Image.new("RGB", (8, 8)).save(path)
  os.symlink(elsewhere, folder / "linked")
  os.symlink("sub", folder / "alias")
  os.symlink("..", folder / "sub" / "up")  # a loop: walked once
  os.symlink("a.png", folder / "a_link.png")  # a captioned image by another name
  _write_jsonl(folder, [{"file": name, "caption": "x"}
                        for name in ("a.png", "sub/c.png", "linked/e.png")])
  _, summary = captioned_folder.build_folder(
      str(folder), data_dir=str(tmp_path / "tfds"), image_size=8)
  assert summary["num_examples"] == 3
  assert summary["skipped_examples"] == {"no_caption": ["linked/uncaptioned.png"]}


def test_a_link_to_a_moved_image_is_named_as_a_broken_link(tmp_path):
  """A folder of links into a photo library that was moved since: each image was counted twice,
  as a caption line naming an unknown file and as an uncaptioned image, and the error told the
  user to check the names in the captions file, which were right."""
  library, folder = tmp_path / "library", tmp_path / "photos"
  library.mkdir()
  folder.mkdir()
  for name in ("a.jpg", "b.jpg"):
    Image.new("RGB", (8, 8)).save(library / name)
    os.symlink(library / name, folder / name)
  _write_jsonl(folder, [{"file": "a.jpg", "caption": "a"}, {"file": "b.jpg", "caption": "b"}])
  os.remove(library / "a.jpg")
  _, summary = captioned_folder.build_folder(
      str(folder), data_dir=str(tmp_path / "tfds"), image_size=8)
  assert summary["num_examples"] == 1
  assert summary["skipped"] == {"broken_link": 1}
  assert summary["skipped_examples"]["broken_link"] == ["a.jpg"]
  assert "link them to the images again" in summary["fixes"]["broken_link"]
  library.rename(tmp_path / "moved")
  with pytest.raises(captioned_folder.FolderError,
                     match=r"None of the captioned images could be read \(broken_link, e.g. "
                           r"a.jpg\)\. Links in the folder point at files that are gone"):
    captioned_folder.build_folder(str(folder), data_dir=str(tmp_path / "tfds2"), image_size=8)


def test_a_name_written_on_windows_with_backslashes_is_the_file(tmp_path):
  """A captions file written on Windows (os.path.relpath there, Excel) names `sub\\c.png`; on
  Linux or macOS each such line was an unknown file and its image uncaptioned."""
  (tmp_path / "sub" / "deeper").mkdir(parents=True)
  Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "c.png")
  Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "deeper" / "d.png")
  (tmp_path / "captions.csv").write_text(
      "file,caption\nsub\\c.png,a c\n.\\sub\\deeper\\d.png,a d\nsub\\nope.png,gone\n")
  skips = caption_files.Skips()
  assert caption_files.read_captions(str(tmp_path), skips) == {
      os.path.join("sub", "c.png"): ["a c"], os.path.join("sub", "deeper", "d.png"): ["a d"]}
  assert skips.examples == {"unknown_file": ["captions.csv:4 (sub\\nope.png)"]}


def test_on_a_case_insensitive_disk_a_name_in_other_case_is_the_file_on_disk(tmp_path,
                                                                              monkeypatch):
  """macOS's and Windows' disks find `Cat.JPG` as cat.jpg: that name was kept as written, so a
  second line spelling it cat.jpg made a second example of the same image, and the build's walk
  (which sees cat.jpg) counted the image as uncaptioned too. Emulated here: the os.path calls
  that check names find them without case, as such a disk does."""
  (tmp_path / "sub").mkdir()
  Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "cat.jpg")
  _write_jsonl(tmp_path, [{"file": "SUB/Cat.JPG", "caption": "a cat"},
                          {"file": "sub/cat.jpg", "caption": "a grey cat"},
                          {"file": "dog.jpg", "caption": "no such file"}])
  root = str(tmp_path)

  def without_case(check):
    return lambda p: check(root + os.fspath(p)[len(root):].lower()
                           if os.fspath(p).startswith(root) else p)
  for name in ("isfile", "exists", "lexists", "islink"):
    monkeypatch.setattr(os.path, name, without_case(getattr(os.path, name)))
  skips = caption_files.Skips()
  assert caption_files.read_captions(root, skips) == {
      os.path.join("sub", "cat.jpg"): ["a cat", "a grey cat"]}
  assert dict(skips.counts) == {"unknown_file": 1}
  monkeypatch.undo()  # a case-sensitive disk: the other spelling is no file
  skips = caption_files.Skips()
  assert caption_files.read_captions(root, skips) == {
      os.path.join("sub", "cat.jpg"): ["a grey cat"]}
  assert dict(skips.counts) == {"unknown_file": 2}


def test_a_name_in_other_case_on_a_case_sensitive_disk_is_skipped_naming_the_file(tmp_path):
  """Captions written on a Mac (whose disk ignores case) for IMG_1.JPG, built on Linux where the
  file is img_1.jpg: every line was an unknown_file and the error said only to check the names;
  the skip names the file on disk and the advice says that case matters."""
  (tmp_path / "sub").mkdir()
  Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "img_1.jpg")
  _write_jsonl(tmp_path, [{"file": "SUB/IMG_1.JPG", "caption": "a cat"},
                          {"file": "SUB\\IMG_1.JPG", "caption": "a cat, on Windows"}])
  with pytest.raises(captioned_folder.FolderError) as e:
    captioned_folder.build_folder(str(tmp_path), data_dir=str(tmp_path / "tfds"), image_size=8)
  assert ("captions.jsonl:1 (SUB/IMG_1.JPG; on disk: sub/img_1.jpg, in other case)"
          in str(e.value))
  assert "their case matters (Cat.JPG is not cat.jpg)" in str(e.value)
  skips = caption_files.Skips()  # the line written on Windows (SUB\IMG_1.JPG) names it too
  assert caption_files.read_captions(str(tmp_path), skips) == {}
  assert skips.examples["unknown_file"][1] == (
      "captions.jsonl:2 (SUB\\IMG_1.JPG; on disk: sub/img_1.jpg, in other case)")


def test_an_absolute_name_from_another_machine_names_the_file_in_the_folder(tmp_path):
  """Captions written where the images lay elsewhere (/home/ann/photos/sub/a.png) were each
  skipped as outside_folder, whose fix said to move the files into the folder they are in. The
  skip names the folder's file the name ends with, and the fix says to name it so."""
  folder = tmp_path / "photos"
  (folder / "sub").mkdir(parents=True)
  Image.new("RGB", (8, 8)).save(folder / "sub" / "a.png")
  elsewhere = tmp_path / "home" / "ann" / "photos"
  _write_jsonl(folder, [{"file": str(elsewhere / "sub" / "a.png"), "caption": "a"},
                        {"file": str(elsewhere / "sub" / "b.png"), "caption": "b"}])
  with pytest.raises(caption_files.FolderError) as error:
    captioned_folder.build_folder(str(folder), data_dir=str(tmp_path / "tfds"), image_size=8)
  assert str(error.value).endswith(
      "or, for names of the folder's files written on another machine, /home/ann/photos/a.jpg, "
      f"write them relative to the folder: a.jpg). E.g. captions.jsonl:1 ({elsewhere}/sub/a.png; "
      "in the folder: sub/a.png).")
  skips = caption_files.Skips()
  assert caption_files.read_captions(str(folder), skips) == {}
  assert skips.examples == {"outside_folder": [
      f"captions.jsonl:1 ({elsewhere}/sub/a.png; in the folder: sub/a.png)",
      f"captions.jsonl:2 ({elsewhere}/sub/b.png)"]}


def test_each_name_is_found_on_disk_once_and_captions_are_kept_once_in_order(tmp_path,
                                                                              monkeypatch):
  """A file named on every line of its captions (one caption a line) was looked up on disk per
  line, and each caption compared with all of its file's before: 40k lines of one image took
  12 s, 0.5 s now (benchmarks/captions_read.py, RESULTS_data.md)."""
  Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
  lines = [{"file": "a.png", "caption": f"c{i % 3}"} for i in range(6)] + [
      {"file": "./a.png", "captions": ["c3", "c0"]}, {"file": "b.png", "caption": "x"},
      {"file": "b.png", "caption": "y"}]
  (tmp_path / "captions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
  found = []
  resolve = folder_names.DiskNames._resolve
  monkeypatch.setattr(folder_names.DiskNames, "_resolve",
                      lambda self, rel, where: found.append(rel) or resolve(self, rel, where))
  skips = caption_files.Skips()
  assert caption_files.read_captions(str(tmp_path), skips) == {"a.png": ["c0", "c1", "c2", "c3"]}
  assert found == ["a.png", "b.png"] and skips.counts == {"unknown_file": 2}
