"""The captioned_shapes evaluator: trained once on a build's real train split, cached, and used
to score images against captions and to embed them for the in-domain FID.

  ev = ShapesEvaluator.load_or_train(config.data)  # loads, or trains once (32px: ~2 min)
  ev.score(images, captions)  # {'caption_accuracy': ..., 'shape': ..., ...}
  ev.features(images)         # [n, 576] in-domain FID features

On captioned_shapes/32 the default training (20,000 train images, 4,000 steps of 64 cells) reads
99.98% of test and holdout shapes and 100% of presence, colour and size (one misread object in
each 2,000-image split), in 267 CPU-s on 2 cores.

Cache: <cache_dir>/evaluator/captioned_shapes-<config>-v<version>-<R>px-<net>.msgpack (flax
serialization) with a .json beside it holding the settings and the measured test accuracies.
cache_dir: LLMIMG_CACHE_DIR or ~/.cache/llmimg_jax.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import flax.serialization
import jax
import ml_collections
import numpy as np

from llmimg_jax.data.images import center_crop_resize
from llmimg_jax.eval import evaluator as ev
from llmimg_jax.eval.captions import parse_caption
from llmimg_jax.eval.scoring import score
from llmimg_jax.output_files import write_atomically
from llmimg_jax.text.tokenizer import as_texts

if TYPE_CHECKING:
  from llmimg_jax.data.captioned_shapes import CaptionedShapes

log = logging.getLogger(__name__)
NET_TAG = "cells2"  # bump when EvaluatorNet or its training changes: old caches are then unused


@dataclasses.dataclass
class SplitData:
  images: np.ndarray  # uint8 [n, R, R, 3]
  gt: dict[str, np.ndarray]  # shape/color/size/cell [n, MAX_OBJECTS], -1 padded; num_objects [n]
  captions: list[list[str]]  # every caption of each image

  def at_size(self, size: int) -> SplitData:
    """The same records with images centre-cropped and resized to [size, size] (a run's
    data.image_size may be below its build's resolution)."""
    if self.images.shape[1:3] == (size, size):
      return self
    images = np.stack([center_crop_resize(image, size) for image in self.images])
    return dataclasses.replace(self, images=images)


def cache_dir() -> Path:
  return Path(os.path.expanduser(os.environ.get("LLMIMG_CACHE_DIR") or "~/.cache/llmimg_jax"))


def shapes_builder(data_cfg: ml_collections.ConfigDict) -> CaptionedShapes:
  """The captioned_shapes builder of `data_cfg`, built if missing; other data is refused."""
  from llmimg_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  if data_cfg.name != "captioned_shapes":
    raise ValueError(f"The shapes evaluator needs data.name='captioned_shapes', not "
                     f"{data_cfg.name!r}; for other data, evaluate.py --inception_weights gives "
                     "the standard FID.")
  pipeline.load_source(data_cfg, "train")  # validates and builds if missing
  return pipeline.builder(data_cfg)


def load_split(data_cfg: ml_collections.ConfigDict, split: str, limit: int | None = None,
               start: int = 0) -> SplitData:
  """Records [start, start + limit) of a captioned_shapes split, with their ground truth."""
  builder = shapes_builder(data_cfg)
  if split not in builder.info.splits:
    raise ValueError(f"captioned_shapes/{data_cfg.config} has no split {split!r}; available: "
                     f"{list(builder.info.splits.keys())}.")
  source = builder.as_data_source(split)
  stop = len(source) if limit is None else min(len(source), start + limit)
  records = [source[i] for i in range(start, stop)]
  gt = {k: np.stack([np.asarray(r[k]) for r in records]).astype(np.int32)
        for k in ("shape", "color", "size", "cell", "num_objects")}
  captions = [[c.decode() if isinstance(c, bytes) else str(c) for c in r["captions"]]
              for r in records]
  return SplitData(np.stack([r["image"] for r in records]), gt, captions)


def _shapes(tree: Any) -> Any:
  return jax.tree.map(lambda x: (x.shape, np.dtype(x.dtype)), tree)


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _pack(weights: bytes) -> bytes:
  """The cache file: the weights and their sha256, in one file (one rename: no other process's
  .json or weights can pair with them)."""
  return flax.serialization.msgpack_serialize({"weights": weights, "sha256": _sha256(weights)})


def _unpack(data: bytes) -> bytes:
  """The weights of a cache file (of one written before the sha256: the file)."""
  packed = flax.serialization.msgpack_restore(data)
  if not (isinstance(packed, dict) and set(packed) == {"weights", "sha256"}):
    return data
  if _sha256(packed["weights"]) != packed["sha256"]:
    raise ValueError("its weights' sha256 is not the one it records (a damaged file)")
  return packed["weights"]


class ShapesEvaluator:
  """Reads images cell by cell; scores them against captions; embeds them for FID."""

  def __init__(self, params, resolution: int, meta: dict | None = None):
    self.net, self.params, self.resolution = ev.EvaluatorNet(), params, resolution
    self.meta = meta or {}
    # Names these weights (a retrained cache scores differently): sha256 of their serialization.
    self.fingerprint = _sha256(flax.serialization.to_bytes(params))[:16]

  @classmethod
  def load_or_train(cls, data_cfg: ml_collections.ConfigDict,
                    settings: ev.TrainSettings | None = None,
                    max_train: int | None = 20_000, directory: Path | None = None
                    ) -> ShapesEvaluator:
    """The cached evaluator of this dataset build, trained (and cached) on first use. The cache
    is named by the build, not by `settings` or `max_train`: a cached evaluator is reused
    whatever they are (delete the cache to retrain with others)."""
    builder = shapes_builder(data_cfg)
    cfg = builder.builder_config
    settings = settings or ev.TrainSettings()
    name = f"captioned_shapes-{cfg.name}-v{builder.version}-{cfg.resolution}px-{NET_TAG}"
    directory = Path(directory or cache_dir() / "evaluator")
    path, meta_path = directory / f"{name}.msgpack", directory / f"{name}.json"
    if path.exists() and meta_path.exists():
      try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
          raise ValueError(f"a JSON {type(meta).__name__}, not an object")
        template = jax.eval_shape(ev.EvaluatorNet().init, jax.random.PRNGKey(0),
                                  np.zeros((1, cfg.resolution, cfg.resolution, 3), np.uint8))
        params = flax.serialization.from_bytes(template["params"], _unpack(path.read_bytes()))
        if _shapes(params) != _shapes(template["params"]):  # from_bytes checks only the names
          raise ValueError(f"weights of other shapes than this version's network ({NET_TAG})")
      except MemoryError:
        raise
      # Cut short by a crash, or other msgpack: {"cell": 5} raised AttributeError, which
      # stopped the run (on one host, the others hung until the distributed service's timeout).
      except Exception as e:  # pylint: disable=broad-except
        log.warning("The cached shapes evaluator %s / %s cannot be read (%s: %s); training it "
                    "again.", path, meta_path.name, type(e).__name__, e)
      else:
        log.info("Loaded the shapes evaluator %s (test accuracy %s).", path, meta.get("test"))
        return cls(params, cfg.resolution, meta)
    t0 = time.perf_counter()
    train = load_split(data_cfg, "train", max_train)
    params = ev.train_net(train.images, ev.cell_labels(train.gt), settings)
    evaluator = cls(params, cfg.resolution)
    test = load_split(data_cfg, "test")
    accuracy = ev.cell_accuracy(evaluator.read(test.images), ev.cell_labels(test.gt))
    evaluator.meta = {"dataset": f"captioned_shapes/{cfg.name}", "version": str(builder.version),
                      "resolution": cfg.resolution, "num_train": len(train.images),
                      "settings": dataclasses.asdict(settings), "test": accuracy,
                      "seconds": time.perf_counter() - t0}
    log.info("Trained the shapes evaluator on %d images in %.0fs; test accuracy %s.",
             len(train.images), evaluator.meta["seconds"], accuracy)
    if min(accuracy.values()) < 0.99:
      log.warning("The shapes evaluator reaches only %s on the test split (< 99%%): its caption "
                  "accuracies are not reliable.", accuracy)
    try:
      directory.mkdir(parents=True, exist_ok=True)
      write_atomically(path, _pack(flax.serialization.to_bytes(params)))
      write_atomically(meta_path, json.dumps(evaluator.meta, indent=2))
    except OSError as e:  # the evaluator trained is used all the same
      log.warning("Could not cache the shapes evaluator in %s (%s: %s): the next evaluation trains "
                  "it again. Set LLMIMG_CACHE_DIR to a folder this user can write (default "
                  "~/.cache/llmimg_jax) to keep it.", directory, type(e).__name__,
                  e.strerror or e)
    return evaluator

  def _fit(self, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise ValueError(f"Expected uint8 images [n, h, w, 3]; got {images.dtype} {images.shape}.")
    if images.shape[1:3] != (self.resolution,) * 2:
      images = np.asarray(jax.image.resize(images.astype(np.float32),
                                           (len(images), self.resolution, self.resolution, 3),
                                           "bilinear", antialias=True).round().clip(0, 255),
                          np.uint8)
    return images

  def read(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-cell reading: present bool [n, 9], shape/color/size [n, 9], features [n, 9 * 2F]."""
    return ev.apply_batched(self.net, self.params, self._fit(images))

  def features(self, images: np.ndarray) -> np.ndarray:
    return self.read(images)["features"]

  def score(self, images: np.ndarray, captions: Iterable[str] | str) -> dict[str, float]:
    """Caption accuracy and per-attribute accuracies of images [n, R, R, 3] against captions (any
    iterable of str, a generator's too; one str: one caption, of one image)."""
    captions = as_texts(captions, "captions")
    for i, c in enumerate(captions):
      if not isinstance(c, str):
        raise TypeError(f"Caption {i} is a {type(c).__name__}, not a str: {c!r:.80}")
    if len(images) != len(captions):
      raise ValueError(f"{len(images)} images but {len(captions)} captions.")
    return score([parse_caption(c) for c in captions], self.read(images))
