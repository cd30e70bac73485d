"""Small helpers shared by the TFDS builders of this package (no TensorFlow needed), and the
error of a dataset that cannot be built or trained on as configured."""
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


class LocalDatasetInfo(tfds.core.DatasetInfo):
  """The DatasetInfo of a dataset built here (no published copy to fetch).

  A builder whose dataset is not prepared yet calls `info.initialize_from_bucket()` (TFDS
  4.9.10: core/dataset_builder.py:301), which makes a tempfile.mkdtemp folder to copy the
  dataset's published info files from GCS into (core/dataset_info.py:886) and never removes it:
  with GCS off in this TFDS, one empty /tmp/tmp*tfds per builder made. Here it does nothing."""

  def initialize_from_bucket(self) -> None:
    pass


class DatasetError(ValueError):
  """A dataset that cannot be built (data_dir not a folder, not writable, full) or trained on
  as configured (too few records); the message names it and the fix."""


def is_prepared(dataset: tfds.core.DatasetBuilder) -> bool:
  """dataset.is_prepared(), without TFDS's warning "Variant folder DIR has no dataset_info.json"
  for a dataset not built yet (DIR missing), which every first command printed, 2-4 times, even
  before an error that had nothing to do with it. A DIR that exists is still TFDS's to judge."""
  path = getattr(dataset, "data_path", None)
  if path is not None and not epath.Path(path).exists():
    return False
  return dataset.is_prepared()


def build(dataset: tfds.core.DatasetBuilder, what: str, data_dir: str) -> None:
  """dataset.download_and_prepare(), an OSError named with the data_dir and the fix (not
  os.makedirs' or a writer's traceback)."""
  try:
    dataset.download_and_prepare()
  except OSError as e:
    raise DatasetError(
        f"Could not build {what} in data.data_dir={data_dir!r} ({type(e).__name__}: {e}). "
        "Check that path, or set data.data_dir to a folder you can write, with room for the "
        "build.") from e
