"""captioned_folder's captions files (caption_files.read_captions): CSV and JSONL lines read,
merged, or skipped and counted with an example of each, and the one error of a folder whose
captions name no usable image, that has no captions file, or whose captions file is UTF-16.

A captions.csv's delimiters and quotes: tests/data/test_captions_csv.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from llmimg_jax.data import caption_files, captioned_folder
from tests.train.cli_utils import as_modes_hold, closed, env


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
    ('[{"file": "a.png", "caption": "x"}]',
     r"one JSON array; captions.jsonl needs one JSON object"),
    ('{"path": "a.png", "caption": "x"}\n', r"no usable image .* needs a file key .* E.g. "
                                            r"captions.jsonl:1"),
    ('{"file": "b.png", "caption": "x"}\n', r"Check the file names .* E.g. captions.jsonl:1 \(b"),
    ('{"file": "a.png", "caption": "x"}\n{"file": "a.png", "caption": "x"}\n',
     r"None of the captioned images could be read \(empty_file, e.g. a.png\)"),
    ("", r"The captions file names no image\. Add a line per image, e\.g\. \{\"file\": "),
    ('{"file": "a.png", "caption": 3}\n{"file": "a.png", "captions": [1, {"en": "x"}]}\n',
     r"no usable image .* \(skipped: \{'caption_not_text': 2\}\)\. Captions must be JSON strings, "
     r"e\.g\. \"caption\": \"a red car\" .* E\.g\. captions\.jsonl:1\."),
])
def test_no_usable_image_names_the_main_reason(tmp_path, captions_jsonl, message):
  (tmp_path / "a.png").touch()  # an empty file
  (tmp_path / "captions.jsonl").write_text(captions_jsonl)
  with pytest.raises(captioned_folder.FolderError, match=message):
    captioned_folder.build_folder(str(tmp_path), data_dir=str(tmp_path / "tfds"), image_size=8)


def test_a_header_only_captions_csv_is_given_a_csv_example(tmp_path):
  """Its advice was a captions.jsonl line."""
  (tmp_path / "a.png").touch()
  (tmp_path / "captions.csv").write_text("file,caption\n")
  with pytest.raises(captioned_folder.FolderError, match=(
      r"The captions file names no image\. Add a line per image, e\.g\. a\.jpg,a red car \(under "
      r"captions\.csv's file,caption header\)\.$")):
    captioned_folder.build_folder(str(tmp_path), data_dir=str(tmp_path / "tfds"), image_size=8)


def test_utf16_captions_file_is_named_with_the_fix(tmp_path):
  Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
  (tmp_path / "captions.csv").write_bytes("file,caption\na.png,red\n".encode("utf-16"))
  with pytest.raises(ValueError, match=r"captions.csv is UTF-16 text; save it as UTF-8"):
    captioned_folder.build_folder(str(tmp_path), data_dir=str(tmp_path / "tfds"), image_size=8)


def test_missing_folder_and_captions_file_errors(tmp_path):
  with pytest.raises(captioned_folder.FolderError, match=r"nope does not exist; set data.folder "
                                                        r"to a folder of images\.$"):
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


def test_a_captions_file_that_is_no_file_is_named_as_such(tmp_path):
  """A captions.csv linked to nothing (or a folder named captions.jsonl) was told to rename
  captions.csv to captions.csv."""
  (tmp_path / "captions.csv").symlink_to(tmp_path / "moved" / "captions.csv")
  with pytest.raises(captioned_folder.FolderError) as error:
    caption_files.check_caption_files(str(tmp_path))
  assert str(error.value) == (
      f"{tmp_path / 'captions.csv'} is a link to {tmp_path / 'moved' / 'captions.csv'}, which is "
      "no file: make it the captions file itself (or a link to it).")
  (tmp_path / "captions.csv").unlink()
  (tmp_path / "captions.jsonl").mkdir()
  with pytest.raises(captioned_folder.FolderError, match=r"captions.jsonl is not a file: make "):
    caption_files.check_caption_files(str(tmp_path))


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


def test_byte_order_marks_of_joined_files_are_dropped(tmp_path):
  """`cat a.jsonl b.jsonl` (each with a BOM) put one at a line's start: its line was skipped as
  invalid_json, and a CSV's next row named '\ufeffb.png', an unknown file."""
  for name in ("a.png", "b.png", "c.png", "d.png"):
    Image.new("RGB", (8, 8)).save(tmp_path / name)
  bom = b"\xef\xbb\xbf"
  (tmp_path / "captions.jsonl").write_bytes(bom + b'{"file": "a.png", "caption": "a"}\n' + bom +
                                            b'{"file": "b.png", "caption": "b"}\n')
  (tmp_path / "captions.csv").write_bytes(bom + b"file,caption\r\nc.png,c\r\n" + bom +
                                          b"d.png,d\r\n")
  skips = caption_files.Skips()
  assert caption_files.read_captions(str(tmp_path), skips) == {
      "a.png": ["a"], "b.png": ["b"], "c.png": ["c"], "d.png": ["d"]}
  assert not skips.counts


def test_a_file_name_that_begins_or_ends_with_a_space_is_read_as_written(tmp_path):
  """Names were stripped first: 'cat.png ' captioned cat.png, and ' dog.png' was unknown."""
  for name, colour in (("cat.png", "red"), ("cat.png ", "blue"), (" dog.png", "green")):
    Image.new("RGB", (8, 8), colour).save(tmp_path / name, format="PNG")
  (tmp_path / "captions.csv").write_text('file,caption\ncat.png,a red cat\n"cat.png ",a blue cat\n'
                                         '" dog.png",a green dog\n"bird.png ",x\n')
  Image.new("RGB", (8, 8)).save(tmp_path / "bird.png")  # padded in the CSV only: stripped
  skips = caption_files.Skips()
  assert caption_files.read_captions(str(tmp_path), skips) == {
      "cat.png": ["a red cat"], "cat.png ": ["a blue cat"], " dog.png": ["a green dog"],
      "bird.png": ["x"]}
  assert not skips.counts


_READ = """import json, sys
from llmimg_jax.data import caption_files
skips = caption_files.Skips()
named = caption_files.read_captions(sys.argv[1], skips)
print(json.dumps([sorted(named), skips.counts, skips.examples]))
"""


def test_an_image_in_a_folder_this_user_cannot_enter_is_skipped_naming_the_folder(tmp_path):
  """A subfolder of mode 000 (copied with another owner's modes): its captioned images were
  skipped as unknown_file, with advice to check the names' spelling and case."""
  (tmp_path / "sub").mkdir()
  for name in ("a.png", "sub/b.png"):
    Image.new("RGB", (8, 8)).save(tmp_path / name)
  (tmp_path / "captions.csv").write_text("file,caption\na.png,x\nsub/b.png,y\nc.png,z\n")
  with closed(tmp_path / "sub"):
    proc = subprocess.run([*as_modes_hold(), sys.executable, "-c", _READ, str(tmp_path)],
                          capture_output=True, text=True, env=env())
  assert json.loads(proc.stdout) == [
      ["a.png"], {"closed_folder": 1, "unknown_file": 1},
      {"closed_folder": [f"captions.csv:3 (sub/b.png; {tmp_path / 'sub'})"],
       "unknown_file": ["captions.csv:4 (c.png)"]}], proc.stderr
  assert "chmod -R a+rX FOLDER" in captioned_folder._ADVICE["closed_folder"]
