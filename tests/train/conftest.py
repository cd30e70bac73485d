import pytest


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
  """A tiny captioned_shapes build shared by the training tests (built on first use)."""
  return tmp_path_factory.mktemp("tfds")
