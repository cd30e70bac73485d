"""Helpers shared by the T5 tests."""
import os
import shutil


def copy_config(src: str, dst: str) -> None:
  """`src`'s config.json into `dst` (made if needed), for a checkpoint folder built by hand."""
  os.makedirs(dst, exist_ok=True)
  shutil.copy(os.path.join(src, "config.json"), dst)
