"""Small helpers shared by the TFDS builders of this package (no TensorFlow needed)."""
from __future__ import annotations

import inspect

import tensorflow_datasets as tfds
from etils import epath


class LocalCodePathMixin:
  """Resolves `code_path` with `inspect.getfile`.

  TFDS's default goes through `importlib.resources`, which for an editable install needs the
  `importlib_resources` backport (not installed on Python >= 3.9) and fails with
  ModuleNotFoundError. List this mixin before `tfds.core.GeneratorBasedBuilder`.
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(inspect.getfile(cls))
