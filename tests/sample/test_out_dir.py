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


def test_an_output_linked_into_an_unwritable_folder_is_refused_before_sampling(tmp_path):
  """An --out, or an output in it, linked into a folder no file can be created in passed (we run
  as root: os.access allows /proc, the kernel does not) and failed after sampling."""
  out = tmp_path / "out"
  out.mkdir()
  (out / checks.GRID_NAME).symlink_to("/proc/llmimg_nope.png")
  message = (f"Output '{out}': {out / checks.GRID_NAME} is a symbolic link to "
             "/proc/llmimg_nope.png, whose folder /proc is not writable (")
  with pytest.raises(PermissionError, match=re.escape(message)):
    checks.check_out_dir(str(out), overwrite=True)
  (tmp_path / "proc").symlink_to("/proc")
  with pytest.raises(PermissionError, match=re.escape(f"Output '{tmp_path}/proc/samples': "
                                                      f"{tmp_path / 'proc'} is not writable (")):
    checks.check_out_dir(f"{tmp_path}/proc/samples")
  assert list(out.iterdir()) == [out / checks.GRID_NAME]  # the probes are gone
