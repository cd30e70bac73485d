"""check_out_dir refuses, before any sampling, an --out that write_samples could not write."""
from __future__ import annotations

import re

import pytest

from llmimg_jax.sample import checks


def test_an_output_linked_to_a_folder_is_refused_before_sampling(tmp_path):
  """write_samples writes a linked output through to its target (d02b573): to a folder, that
  failed with IsADirectoryError once the earlier outputs were removed and some new ones moved in.
  """
  out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
  out.mkdir()
  elsewhere.mkdir()
  (out / checks.JSONL_NAME).symlink_to(elsewhere)
  message = (f"Output '{out}': {out / checks.JSONL_NAME} is a symbolic link to {elsewhere}, a "
             "folder; point it at a file, or remove the link.")
  with pytest.raises(IsADirectoryError, match=re.escape(message)):
    checks.check_out_dir(str(out), overwrite=True)  # as sample.py passes --out
