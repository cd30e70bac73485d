"""llmimg_jax/train/state.py: WORKDIR/text, as save_text_files writes it."""
import os
import stat

import pytest

from llmimg_jax.train.state import TEXT_DIR, build_text, save_text_files
from tests.train.utils import tiny_config


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_text_files_follow_the_umask_as_a_plain_mkdir(tmp_path, umask):
  """WORKDIR/text was made by tempfile.mkdtemp (0700 whatever the umask) and renamed into place:
  others could not sample a run on a pretrained T5, whose other files they could read."""
  tokenizer, t5_config, _ = build_text(tiny_config(tmp_path / "unused_data"))
  workdir = tmp_path / "run"
  workdir.mkdir()
  old = os.umask(umask)
  try:
    (workdir / "sibling").mkdir()
    text = save_text_files(workdir, tokenizer, t5_config)
    save_text_files(workdir, tokenizer, t5_config, replace=True)
  finally:
    os.umask(old)
  mode = stat.S_IMODE(os.stat(text).st_mode)
  assert text == workdir / TEXT_DIR
  assert mode == stat.S_IMODE(os.stat(workdir / "sibling").st_mode) == 0o777 & ~umask
  assert stat.S_IMODE(os.stat(text / "config.json").st_mode) == 0o666 & ~umask
  assert sorted(p.name for p in workdir.iterdir()) == ["sibling", TEXT_DIR]
