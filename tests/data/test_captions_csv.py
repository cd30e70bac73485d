"""captioned_folder: a captions.csv whose columns are not separated by commas, whose quoted
cells follow a space, or that opens a quote it never closes."""
from __future__ import annotations

import unicodedata

import pytest
from PIL import Image

from llmimg_jax.data import caption_files, captioned_folder


def _read(folder, images, csv_text: str, notes=None) -> tuple[dict, caption_files.Skips]:
  """read_captions (and its skips) of `folder` holding 8px images named `images` and `csv_text`
  as its captions.csv."""
  for name in images:
    Image.new("RGB", (8, 8)).save(folder / name)
  (folder / "captions.csv").write_text(csv_text)
  skips = caption_files.Skips()
  return caption_files.read_captions(str(folder), skips, notes), skips


@pytest.mark.parametrize("delimiter, name", [(";", "semicolons"), ("\t", "tabs"), ("|", "bars")])
def test_a_header_split_by_another_delimiter_says_so(tmp_path, delimiter, name):
  """A European Excel's ';' (or a TSV) was refused as a header that lacks the file and caption
  columns it has, without naming the delimiter."""
  (tmp_path / "captions.csv").write_text(f"File Name{delimiter}caption\na.png{delimiter}a cat\n")
  with pytest.raises(caption_files.FolderError) as error:
    caption_files.check_caption_files(str(tmp_path))
  assert str(error.value).endswith(
      f"Its columns are separated by {name}; captions.csv needs commas (save it as \"CSV UTF-8 "
      "(Comma delimited)\", or write it with Python's csv module).")


def test_a_header_without_the_columns_gets_no_delimiter_hint(tmp_path):
  (tmp_path / "captions.csv").write_text("path;label\na.png;cat\n")
  with pytest.raises(caption_files.FolderError, match=r"needs a file column") as error:
    caption_files.check_caption_files(str(tmp_path))
  assert "separated by" not in str(error.value)


def test_a_quoted_cell_after_a_space_is_read_as_quoted(tmp_path):
  """`a.png, "a cat, sitting"` (a space after the comma, as people type) kept the quotes in the
  stored caption, split it at its commas (a caption column not last: the row skipped) and noted
  an unquoted comma; a header `"file", "caption"` was refused. Unquoted commas keep their
  spaces."""
  notes = caption_files.Skips()
  captions, skips = _read(
      tmp_path, ("a.png", "b.png", "c.png", "d.png"),
      '"file", "caption"\nc.png, a car, parked,  by a house\na.png, "a red cat"\n'
      'b.png, "a dog, sitting"\nd.png, "a ""quoted"" word"\n', notes)
  assert captions == {
      "a.png": ["a red cat"], "b.png": ["a dog, sitting"], "c.png": ["a car, parked,  by a house"],
      "d.png": ['a "quoted" word']}
  assert not skips.counts and dict(notes.counts) == {"unquoted_csv_comma": 1}
  (tmp_path / "captions.csv").write_text('file, caption, source\na.png, "a cat, sitting", web\n')
  skips = caption_files.Skips()
  assert caption_files.read_captions(str(tmp_path), skips) == {"a.png": ["a cat, sitting"]}
  assert not skips.counts


def test_a_quote_never_closed_is_an_error_naming_its_line(tmp_path):
  """A caption opening a quote that no later one closes read the rest of a large captions.csv
  into one cell, and the build failed with csv's bare "field larger than field limit (131072)",
  naming neither the file nor the line."""
  (tmp_path / "captions.csv").write_text(
      'file,caption\na.png,a cat\n\nb.png,"a 12 inch record\n' +
      "".join(f"{i}.png,an image\n" for i in range(10_000)))
  with pytest.raises(caption_files.FolderError) as error:
    caption_files.read_captions(str(tmp_path), caption_files.Skips())
  assert str(error.value) == (
      f"{tmp_path / 'captions.csv'}:4: field larger than field limit (131072): a quote opened in "
      "that record is never closed, so the lines after it were read as one cell. Close it, or "
      'write a quote inside a caption as two and quote the caption ("a 12"" record").')


def test_records_read_into_a_quote_left_open_are_a_skip_naming_its_lines(tmp_path):
  """A caption opening a quote that closes only in a later record (or at the end of the file)
  read the records in between into its caption: b.png was stored with the caption 'a 12 inch
  record\\nc.png,a dog\\nd.png,a bird"' and c.png and d.png were skipped as uncaptioned, nothing
  naming the quote. A quoted caption holding a line break is still one caption."""
  captions, skips = _read(
      tmp_path, (f"{name}.png" for name in "abcdefg"),
      'file,caption\na.png,a cat\n\nb.png,"a 12 inch record\nc.png,a dog\nd.png,"a bird"\n'
      'e.png,"two lines\nof caption"\nf.png,"an eel\n')
  assert captions == {
      "a.png": ["a cat"], "e.png": ["two lines\nof caption"], "f.png": ["an eel"]}
  assert skips.examples == {"unclosed_csv_quote": ["captions.csv:4-6"]}
  _, summary = captioned_folder.build_folder(str(tmp_path), str(tmp_path / "tfds"), 8)
  assert summary["skipped"] == {"no_caption": 4, "unclosed_csv_quote": 1}
  assert summary["fixes"]["unclosed_csv_quote"].startswith(
      "A caption in captions.csv opens a quote that is not closed where it ends")


def test_a_quote_left_open_is_found_when_the_next_record_names_the_same_file(tmp_path):
  """One file's captions on several records, the first opening a quote the next closes: a.png
  was stored with the caption 'a cat on a mat\na.png,a grey kitten"', nothing skipped."""
  captions, skips = _read(tmp_path, ("a.png", "b.png", "c.png", "d.png"),
                          'file,caption\na.png,"a cat on a mat\na.png,"a grey kitten"\n'
                          'b.png,"a dog"\nc.png,"Title\nc.png, a cow"\nd.png,"\nd.png\na doe"\n')
  # A caption's own lines that mention its file are no records: no cells beyond it, or its quote.
  assert captions == {"b.png": ["a dog"], "c.png": ["Title\nc.png, a cow"],
                      "d.png": ["d.png\na doe"]}
  assert skips.examples == {"unclosed_csv_quote": ["captions.csv:2-3"]}


def test_a_caption_longer_than_csvs_limit_is_named_as_such(tmp_path):
  """A closed-quoted caption of over 131,072 characters was reported as a quote never closed."""
  (tmp_path / "captions.csv").write_text('file,caption\na.png,"' + "word " * 30_000 + '"\n')
  with pytest.raises(caption_files.FolderError) as error:
    caption_files.read_captions(str(tmp_path), caption_files.Skips())
  assert str(error.value) == (
      f"{tmp_path / 'captions.csv'}:2: field larger than field limit (131072): a caption that "
      "long cannot be read from captions.csv; shorten it, or give it in captions.jsonl.")


def test_a_cell_holding_numpys_str_of_an_array_is_its_captions(tmp_path):
  """pandas writes an array cell (a list column read with pyarrow) as numpy's str, without
  commas: ast.literal_eval joined ['a cat' 'a grey cat'] into the one caption 'a cata grey cat'.
  A long array wraps its line."""
  captions, skips = _read(
      tmp_path, ("a.png", "b.png"),
      'file,captions\na.png,[\'a cat\' \'a grey cat\']\nb.png,"[""a dog\'s toy"" \'a dog\'\n'
      ' \'a pup\']"\n')
  assert captions == {"a.png": ["a cat", "a grey cat"], "b.png": ["a dog's toy", "a dog", "a pup"]}
  assert not skips.counts
  # A Latin-1 byte in such a cell: a skip, not Python 3.12's tokenize's UnicodeEncodeError.
  (tmp_path / "captions.csv").write_bytes(b"file,captions\na.png,['caf\xe9' 'a latte']\n")
  skips = caption_files.Skips()
  assert caption_files.read_captions(str(tmp_path), skips) == {}
  assert skips.examples == {"invalid_utf8": ["captions.csv:2"]}


def test_a_cell_holding_a_list_of_captions_is_those_captions(tmp_path):
  """pandas writes a list column as Python's repr, so a DataFrame of files and their captions
  saved with to_csv stored the one caption "['a cat', 'a grey cat']" for a.png. A JSON list is
  read too; an empty one is a blank caption; other bracketed text is a caption."""
  captions, skips = _read(
      tmp_path, (f"{name}.png" for name in "abcde"),
      'file,captions\na.png,"[\'a cat\', \'a grey cat\']"\nb.png,"[""a dog"", ""a dog\'s toy""]"\n'
      'c.png,[draft] a cow\nd.png,[]\ne.png,"[1, 2]"\n')
  assert captions == {
      "a.png": ["a cat", "a grey cat"], "b.png": ["a dog", "a dog's toy"],
      "c.png": ["[draft] a cow"], "d.png": [], "e.png": ["[1, 2]"]}
  assert skips.examples == {"empty_caption": ["captions.csv:5"]}


def test_a_record_read_into_a_quote_names_its_file_as_the_captions_may(tmp_path):
  """The lines read into a quote left open were found by an exact file name only: a record
  naming its file in another Unicode form (café.png, decomposed on disk as macOS writes it) or
  case (D.PNG for d.png, which the build names as on disk in other case) stayed in the caption."""
  captions, skips = _read(
      tmp_path, ["a.png", "b.png", unicodedata.normalize("NFD", "café.png"), "d.png", "e.png"],
      'file,caption\na.png,"a 12 inch record\ncafé.png,a latte"\nb.png,"a 7 inch record\n'
      'D.PNG,a bird"\ne.png,an eel\n')
  assert captions == {"e.png": ["an eel"]}
  assert skips.examples == {"unclosed_csv_quote": ["captions.csv:2-3", "captions.csv:4-5"]}
