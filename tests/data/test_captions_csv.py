"""captioned_folder: a captions.csv whose columns are not separated by commas."""
from __future__ import annotations

import pytest

from llmimg_jax.data import caption_files


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
