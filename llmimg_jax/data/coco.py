"""COCO captions through TFDS's `coco_captions`, mapped to this package's example format.

TFDS's `coco_captions` builder imports TensorFlow (even to construct it), so this path needs the
`tf` extra: `pip install 'llmimg_jax[tf]'`. Everything else in `llmimg_jax.data` works without it.
"""
from __future__ import annotations

import os
import re
import time
import urllib.parse
from typing import TYPE_CHECKING

import numpy as np

from llmimg_jax import console

if TYPE_CHECKING:
  import tensorflow_datasets as tfds

TF_EXTRA_HINT = ("coco_captions needs TensorFlow (TFDS's coco_captions builder imports it) and "
                 "importlib_resources: install the `tf` extra, e.g. pip install 'llmimg_jax[tf]'.")


class MissingTensorFlowError(ImportError, ValueError):
  """The `tf` extra is missing: an ImportError, and a ValueError as config errors are, so that
  train.py and prepare refuse the config in one line before anything loads."""


def check_tensorflow() -> None:
  """Raises MissingTensorFlowError naming the `tf` extra if it is not installed."""
  if not tensorflow_available():
    raise MissingTensorFlowError(TF_EXTRA_HINT)


def tensorflow_available() -> bool:
  """Whether the `tf` extra is installed: TensorFlow, and importlib_resources, through which
  TFDS's coco_captions finds its checksums."""
  try:
    import importlib_resources  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
    import tensorflow  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def coco_builder(data_dir: str) -> tfds.core.DatasetBuilder:
  """The `coco_captions` builder (array_record files, for random access); not built here
  (`download_and_prepare`)."""
  check_tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.builder("coco_captions", data_dir=data_dir, file_format="array_record")


class CocoDownloadError(ValueError):
  """COCO could not be downloaded or built (no network, a failed or corrupt download, disk)."""


# A fresh build first asks each download host for one file's headers, so that offline it fails in
# seconds: TFDS's downloader retries a connection error for ~3.5 minutes (urllib3 backoff).
PROBE_TRIES = 2
PROBE_TIMEOUT_S = 10.0
PROBE_DELAY_S = 2.0


def download_and_prepare(builder: tfds.core.DatasetBuilder, data_dir: str) -> None:
  """builder.download_and_prepare(), a failed download named in one paragraph with the fix
  (not a requests/TFDS traceback, minutes into the run)."""
  from tensorflow_datasets.core.download import (  # pylint: disable=g-import-not-at-top
      download_manager, util)
  from llmimg_jax.data import tfds_utils  # pylint: disable=g-import-not-at-top
  if not tfds_utils.is_prepared(builder):
    _check_hosts_answer(builder, data_dir)
  try:
    with console.bars_guarded("coco_captions build"):
      builder.download_and_prepare()
  except download_manager.NonMatchingChecksumError as e:
    raise _checksum_error(builder, data_dir, e) from e
  except (OSError, RuntimeError, util.DownloadError) as e:
    if isinstance(e, RuntimeError) and not tfds_utils.is_os_error(e):  # a full disk is one
      raise
    raise _download_error(data_dir, f"{type(e).__name__}: {_short(e)}") from e


def _download_error(data_dir: str, why: str) -> CocoDownloadError:
  return CocoDownloadError(
      f"coco_captions could not be downloaded or built in data.data_dir={data_dir!r} "
      f"({why}). The first build downloads ~40 GB from "
      "images.cocodataset.org (TFDS fetches every COCO 2014 archive, the test sets' too) and "
      "extracts it: run `python -m llmimg_jax.data.prepare --dataset coco_captions "
      "--data_dir DIR` where that site is reachable (with ~100 GB free: the archives, their "
      "files and the build), then set data.data_dir to DIR (a location every host sees). "
      "Archives fetched by hand go in DIR/downloads/manual/ under their own names.")


def _checksum_error(builder, data_dir: str, e: Exception) -> CocoDownloadError:
  """A file in downloads/manual/ that is not the archive TFDS expects: rerunning where the site
  is reachable reads the same file again. (A download's own is _download_error's: a proxy's page,
  say.)"""
  found = re.search(r"Artifact (\S+), downloaded to (.+?), has wrong checksum", str(e))
  if found is None or os.sep + os.path.join("downloads", "manual") + os.sep not in found[2]:
    return _download_error(data_dir, f"{type(e).__name__}: {_short(e)}")
  url, path = found.groups()
  info = (builder.url_infos or {}).get(url)
  expected = "" if info is None else f" ({int(info.size):,} bytes, sha256 {info.checksum})"
  return CocoDownloadError(
      f"coco_captions: {path} is not the archive {url}{expected}: damaged, or another file of "
      "that name. Delete or replace it, then rerun.")


def _check_hosts_answer(builder, data_dir: str) -> None:
  """Raises CocoDownloadError if a download host does not answer; skipped where every archive is
  on disk already (TFDS then builds offline)."""
  urls: dict[str, str] = {}  # host -> its first URL
  for url in builder.url_infos or {}:
    urls.setdefault(urllib.parse.urlsplit(url).netloc, url)
  if not urls or _all_downloaded(builder):
    return
  for host, url in urls.items():
    if (why := _probe(url)) is not None:
      raise _download_error(data_dir, f"{host} does not answer: {why}")


# What TFDS's coco_captions build fetches (every 2014 archive, the test2015 set's, Karpathy's
# captions); its url_infos lists COCO 2017's archives too.
FETCHED = re.compile(r"(2014|test2015)\.zip$|caption_datasets\.zip$")


def _all_downloaded(builder) -> bool:
  """Whether TFDS finds every archive on disk, where it looks: DATA_DIR/downloads/manual/ under
  the archive's own name, or a finished download (the file under TFDS's name, with its .INFO)
  in downloads/coco_captions/ or downloads/. Other files (a cut-short download's .tmp. folder,
  another dataset's) do not build offline: TFDS would retry the hosts for ~3.5 minutes."""
  from tensorflow_datasets.core.download import resource  # pylint: disable=g-import-not-at-top
  downloads = builder.data_dir_root / "downloads"

  def found(url: str, info) -> bool:
    if info is None:
      return False
    if info.filename and (downloads / "manual" / info.filename).is_file():
      return True
    name = resource.get_dl_fname(url, info.checksum)
    return any((folder / name).is_file() and (folder / f"{name}.INFO").is_file()
               for folder in (downloads / builder.name, downloads))

  return all(found(url, info) for url, info in builder.url_infos.items() if FETCHED.search(url))


def _probe(url: str) -> str | None:
  """None if `url`'s host answers (any HTTP status), else the last try's error."""
  import requests  # pylint: disable=g-import-not-at-top
  for attempt in range(PROBE_TRIES):
    if attempt:
      time.sleep(PROBE_DELAY_S)
    try:
      requests.head(url, timeout=PROBE_TIMEOUT_S)
      return None
    except requests.RequestException as e:
      why = f"{type(e).__name__}: {_short(e)}"
  return why


def _short(e: Exception) -> str:
  return " ".join(str(e).split())[:300]


def coco_to_example(ex: dict) -> dict:
  """A coco_captions record -> {'image': uint8 [h, w, 3], 'captions': list of str/bytes}."""
  image = np.asarray(ex["image"])  # [h, w, 3]
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  elif image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  captions = ex["captions"]
  texts = captions["text"] if isinstance(captions, dict) else captions
  return {"image": image.astype(np.uint8), "captions": list(texts)}
