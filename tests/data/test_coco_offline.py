"""coco_captions offline: a fresh build fails in seconds, not after TFDS's ~3.5 minutes of
retries."""
from __future__ import annotations

import hashlib
import sys
import types
from pathlib import Path

import pytest
import requests
from tensorflow_datasets.core.download import download_manager, resource

from llmimg_jax.data import coco
from tests.data.utils import ReaderGone

COCO_URL = "http://images.cocodataset.org/zips/train2014.zip"
KARPATHY_URL = "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"


class FakeCoco:
  """The parts of TFDS's coco_captions builder that coco.download_and_prepare uses."""

  name = "coco_captions"

  def __init__(self, root: Path, prepared: bool = False, fails: Exception | None = None):
    self.data_dir_root, self.prepared, self.built, self.fails = root, prepared, False, fails
    urls = [COCO_URL, COCO_URL.replace("train", "val"), KARPATHY_URL,
            COCO_URL.replace("2014", "2017")]  # not fetched by the build (TFDS lists it too)
    self.url_infos = {url: types.SimpleNamespace(size=1000, filename=url.rsplit("/", 1)[1],
                                                 checksum=hashlib.sha256(url.encode()).hexdigest())
                      for url in urls}

  def is_prepared(self) -> bool:
    return self.prepared

  def download_and_prepare(self) -> None:
    if self.fails:
      raise self.fails
    self.built = True


def _download(builder: FakeCoco, url: str, folder: str = "coco_captions") -> None:
  """A finished download of `url` where TFDS keeps it (downloads/coco_captions/; downloads/ in
  TFDS's older layout): the file, and its .INFO beside it."""
  name = resource.get_dl_fname(url, builder.url_infos[url].checksum)
  (builder.data_dir_root / "downloads" / folder).mkdir(parents=True, exist_ok=True)
  for file in (name, f"{name}.INFO"):
    (builder.data_dir_root / "downloads" / folder / file).write_text("downloaded")


def _copy_by_hand(builder: FakeCoco, url: str) -> None:
  (builder.data_dir_root / "downloads" / "manual").mkdir(parents=True, exist_ok=True)
  (builder.data_dir_root / "downloads" / "manual" / builder.url_infos[url].filename).write_text(
      "copied from another machine")


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
  builder = FakeCoco(tmp_path)  # every archive the build fetches: two downloaded, one by hand
  _download(builder, COCO_URL)
  _download(builder, KARPATHY_URL, folder="")  # TFDS's older layout
  _copy_by_hand(builder, COCO_URL.replace("train", "val"))
  coco.download_and_prepare(builder, str(tmp_path))
  assert builder.built and probed == []
  monkeypatch.setattr(requests, "head", lambda url, timeout: probed.append(url))
  builder = FakeCoco(tmp_path / "elsewhere")
  coco.download_and_prepare(builder, str(tmp_path / "elsewhere"))
  assert builder.built and probed == [COCO_URL, KARPATHY_URL]  # one URL per host


@pytest.mark.parametrize("on_disk", ["cut_short", "other_dataset", "coco_dataset",
                                     "some_archives"])
def test_files_that_are_not_every_archive_still_probe_the_hosts(tmp_path, probed, on_disk):
  """Any file under downloads/ skipped the probe: a cut-short download's (TFDS leaves its
  .tmp. folder), another dataset's, or some of the archives left ~3.5 minutes of retries."""
  builder = FakeCoco(tmp_path)
  downloads = tmp_path / "downloads"
  if on_disk == "cut_short":
    name = resource.get_dl_fname(COCO_URL, builder.url_infos[COCO_URL].checksum)
    (downloads / f"{name}.tmp.0123abcd").mkdir(parents=True)
    (downloads / f"{name}.tmp.0123abcd" / "train2014.zip").write_bytes(b"partial")
  elif on_disk == "other_dataset":
    downloads.mkdir()
    (downloads / "storage.googleapis.com_other.zip").write_text("another dataset's")
    (downloads / "storage.googleapis.com_other.zip.INFO").write_text("{}")
  elif on_disk == "coco_dataset":  # TFDS's coco/2014: the same archives, not where this looks
    for url in (COCO_URL, COCO_URL.replace("train", "val"), KARPATHY_URL):
      _download(builder, url, folder="coco")
  else:
    _download(builder, COCO_URL)
    _copy_by_hand(builder, KARPATHY_URL)
  with pytest.raises(coco.CocoDownloadError, match="images.cocodataset.org does not answer"):
    coco.download_and_prepare(builder, str(tmp_path))
  assert probed == [COCO_URL] * 2 and not builder.built


def test_an_archive_with_the_wrong_checksum_is_named_with_the_fix(tmp_path, probed):
  """A damaged file in downloads/manual/ (TFDS reads it before any download) was told to build
  where the site is reachable, which read the same file again."""
  builder = FakeCoco(tmp_path)
  for url in (COCO_URL, COCO_URL.replace("train", "val"), KARPATHY_URL):
    _copy_by_hand(builder, url)
  path = tmp_path / "downloads" / "manual" / "train2014.zip"
  builder.fails = download_manager.NonMatchingChecksumError(
      f"Artifact {COCO_URL}, downloaded to {path}, has wrong checksum:\n* Expected: UrlInfo("
      "size=1000 bytes, ...)\n* Got: UrlInfo(size=27 bytes, ...)\nTo debug, see: https://...")
  info = builder.url_infos[COCO_URL]
  with pytest.raises(coco.CocoDownloadError) as error:
    coco.download_and_prepare(builder, str(tmp_path))
  assert str(error.value) == (
      f"coco_captions: {path} is not the archive {COCO_URL} (1,000 bytes, sha256 {info.checksum}): "
      "damaged, or another file of that name. Delete or replace it, then rerun.")
  assert probed == []  # every archive on disk
  # A download's own (a proxy's page, say): rerunning where the site is reachable is the fix.
  fresh = tmp_path / "downloads" / "coco_captions" / "x.zip.tmp.0123" / "train2014.zip"
  builder.fails = download_manager.NonMatchingChecksumError(
      f"Artifact {COCO_URL}, downloaded to {fresh}, has wrong checksum:\n* Expected: ...")
  with pytest.raises(coco.CocoDownloadError, match=r"could not be downloaded or built .*"
                     r"NonMatchingChecksumError: .*where that site is reachable"):
    coco.download_and_prepare(builder, str(tmp_path))


def test_a_build_whose_log_reader_is_gone_completes(tmp_path, probed, monkeypatch):
  """TFDS's progress bars raised BrokenPipeError at their next draw, ending the build."""
  class DrawsBars(FakeCoco):
    def download_and_prepare(self) -> None:
      print("Dl Completed...: 100%", file=sys.stderr)  # as tqdm finds stderr: when it starts
      super().download_and_prepare()

  monkeypatch.setattr(sys, "stderr", ReaderGone())
  builder = DrawsBars(tmp_path, prepared=True)
  coco.download_and_prepare(builder, str(tmp_path))
  assert builder.built
