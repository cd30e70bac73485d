"""coco_captions offline: a fresh build fails in seconds, not after TFDS's ~3.5 minutes of
retries."""
from __future__ import annotations

from pathlib import Path

import pytest
import requests

from llmimg_jax.data import coco

COCO_URL = "http://images.cocodataset.org/zips/train2014.zip"
KARPATHY_URL = "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"


class FakeCoco:
  """The parts of TFDS's coco_captions builder that coco.download_and_prepare uses."""

  def __init__(self, root: Path, prepared: bool = False):
    self.data_dir_root, self.prepared, self.built = root, prepared, False
    self.url_infos = {COCO_URL: None, COCO_URL.replace("train", "val"): None, KARPATHY_URL: None}

  def is_prepared(self) -> bool:
    return self.prepared

  def download_and_prepare(self) -> None:
    self.built = True


@pytest.fixture
def probed(monkeypatch) -> list[str]:
  """The URLs asked for; every host fails to resolve except cs.stanford.edu."""
  asked = []

  def head(url, timeout):
    asked.append(url)
    assert timeout <= 10  # seconds
    if "stanford" not in url:
      raise requests.ConnectionError("HTTPConnectionPool(host='images.cocodataset.org', port=80): "
                                     "Failed to resolve 'images.cocodataset.org'")
    return requests.Response()

  monkeypatch.setattr(requests, "head", head)
  monkeypatch.setattr(coco, "PROBE_DELAY_S", 0.0, raising=False)
  return asked


def test_an_unanswering_host_fails_before_the_download(tmp_path, probed):
  builder = FakeCoco(tmp_path)
  (tmp_path / "downloads" / "train2014.zip.tmp.0123").mkdir(parents=True)  # a failed try's
  with pytest.raises(coco.CocoDownloadError, match=(
      rf"could not be downloaded or built in data.data_dir='{tmp_path}' \(images.cocodataset.org "
      r"does not answer: ConnectionError: .*Failed to resolve .*--data_dir DIR")):
    coco.download_and_prepare(builder, str(tmp_path))
  assert probed == [COCO_URL] * 2 and not builder.built  # tried twice


def test_answering_hosts_a_built_dataset_or_cached_downloads_build_as_before(tmp_path, probed,
                                                                               monkeypatch):
  builder = FakeCoco(tmp_path, prepared=True)
  coco.download_and_prepare(builder, str(tmp_path))
  assert builder.built and probed == []
  (tmp_path / "downloads").mkdir()
  (tmp_path / "downloads" / "train2014.zip").write_bytes(b"copied from another machine")
  builder = FakeCoco(tmp_path)
  coco.download_and_prepare(builder, str(tmp_path))
  assert builder.built and probed == []
  monkeypatch.setattr(requests, "head", lambda url, timeout: probed.append(url))
  builder = FakeCoco(tmp_path / "elsewhere")
  coco.download_and_prepare(builder, str(tmp_path / "elsewhere"))
  assert builder.built and probed == [COCO_URL, KARPATHY_URL]  # one URL per host
