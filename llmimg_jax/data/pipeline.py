"""Grain input pipeline: random-access sources, seeded shuffle, host slicing, augmentation,
tokenization in the loader workers, numpy batches (`global_batch` makes them `jax.Array`s).

    it = make_iterator(cfg, tok, batch_size_per_host=64, seed=0)
    batch = next(it)   # {'image': uint8 [b, R, R, 3], 'input_ids': int32 [b, L],
                       #  'attention_mask': int32 [b, L], 'index': int64 [b]}
    state = it.get_state(); ...; it.set_state(state)   # resumes with the exact same batches

Per-record randomness (crop, flip, caption choice) comes from grain's per-record RNG, derived
from `seed` and the record's position in the sampler order, so it does not depend on workers.
grain shuffles epoch e with seed + e and seeds position i's RNG with seed + i, so the seed is
hashed first (`sampler_seed`): with it as given, runs of seeds s and s + 1 read the same record
orders one epoch apart.
"""
from __future__ import annotations

import copy
import logging
import os
import re
from typing import TYPE_CHECKING, Any

import grain
import ml_collections
import numpy as np

from llmimg_jax import output_files
from llmimg_jax.data import tfds_utils
from llmimg_jax.data.flip import swap_left_right
from llmimg_jax.data.host_slices import HostSliceSampler
from llmimg_jax.data.images import center_crop_resize, resize
from llmimg_jax.data.source import ExampleSource

if TYPE_CHECKING:
  import tensorflow_datasets as tfds

  from llmimg_jax.text.tokenizer import TextTokenizer

log = logging.getLogger(__name__)

DATASETS = ("captioned_shapes", "captioned_folder", "coco_captions")
DEFAULT_DATA_DIR = "~/tensorflow_datasets"


def default_data_dir() -> str:
  """data.data_dir's default, which data_dir=None reads too: $LLMIMG_DATA_DIR, else
  $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.environ.get("LLMIMG_DATA_DIR") or os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR


def default_data_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "captioned_shapes"  # one of DATASETS
  c.config = "32_small"  # captioned_shapes builder config (see captioned_shapes.BUILDER_CONFIGS)
  c.data_dir = default_data_dir()
  c.folder = ""  # captioned_folder: the folder with images and captions.jsonl / captions.csv
  c.store_size = 0  # captioned_folder: stored resolution (0 = image_size)
  c.max_pixels = 0  # captioned_folder: skip images declaring more pixels (0 = PIL's limit)
  c.image_size = 32  # model resolution
  c.random_crop = 0.0  # smallest crop side as a fraction of the image in (0, 1); 0: centre crop
  # (training refuses it for captioned_shapes, whose captions state sizes and places)
  c.random_flip = False  # horizontal flip; swaps 'left'/'right' in the caption
  c.num_workers = 0  # grain worker processes (0 = in process)
  c.worker_buffer_size = 2
  c.read_threads = 0  # grain ReadOptions.num_threads per process (0 = grain's default, 16)
  # grain ReadOptions.prefetch_buffer_size (0 = two per read thread, 32 with grain's 16).
  c.read_buffer_size = 0
  c.build_num_proc = 0  # processes used to build captioned_shapes (0 = automatic)
  return c


# ---------------------------------------------------------------------------------------------
# Sources (ExampleSource: data/source.py)


def _data_dir(data_cfg) -> str:
  # None: the default (it read ~/tensorflow_datasets, a second build beside $TFDS_DATA_DIR's)
  data_dir = data_cfg.get("data_dir") or default_data_dir()
  if "://" in data_dir:  # a bucket, which TFDS reads (pathlib would make gs:// a local gs:/)
    return data_dir
  # Not a literal folder '~nosuchuser'.
  return str(output_files.flag_path(data_dir, "data.data_dir"))


def paths_in_full(data_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `data_cfg` with data.folder and a local data.data_dir absolute, ~ expanded. A run
  saves its config so: relative, they named whatever folder and build were at that path in the
  directory evaluate.py ran in, not the ones the run trained on."""
  data_cfg = copy.deepcopy(data_cfg)
  if data_cfg.get("folder"):  # as captioned_folder.folder_config names its build
    data_cfg.folder = os.path.abspath(os.path.expanduser(data_cfg.folder))
  if "data_dir" in data_cfg:  # None too: saved as the folder (or bucket) it read
    data_dir = _data_dir(data_cfg)
    data_cfg.data_dir = data_dir if "://" in data_dir else os.path.abspath(data_dir)
  return data_cfg


def validate_data_config(data_cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the bad field and the fix."""
  name = data_cfg.get("name")
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset data.name={name!r}; expected one of {DATASETS}.")
  if int(data_cfg.get("image_size") or 0) <= 0:
    raise ValueError(f"data.image_size must be a positive int, got {data_cfg.get('image_size')}.")
  _data_dir(data_cfg)
  for key in ("data_dir", "folder"):  # a traceback in the records writer, or TFDS's encode error
    if (path := data_cfg.get(key)) and not output_files.is_utf8(path):
      raise ValueError(f"data.{key}={path!r} is not UTF-8, which TFDS's build cannot name; "
                       "rename the folder to a UTF-8 name and pass that.")
  if name == "coco_captions":  # TFDS's builder needs TensorFlow: say so before anything loads
    from llmimg_jax.data import coco  # pylint: disable=g-import-not-at-top
    coco.check_tensorflow()
  if name == "captioned_shapes":
    from llmimg_jax.data import captioned_shapes  # pylint: disable=g-import-not-at-top
    res = captioned_shapes.builder_config(data_cfg.get("config"), "data.config").resolution
    if data_cfg.image_size > res:
      configs = captioned_shapes.BUILDER_CONFIGS
      fits = sorted(c.name for c in configs if c.resolution >= data_cfg.image_size)
      largest = max(configs, key=lambda c: c.resolution)
      pick = (f"pick a config with images of at least {data_cfg.image_size}px {fits}" if fits
              else f"no config stores {data_cfg.image_size}px images (the largest, "
                   f"{largest.name!r}, stores {largest.resolution}px), so")
      raise ValueError(
          f"data.image_size={data_cfg.image_size} but captioned_shapes/{data_cfg.config} stores "
          f"{res}px images; {pick} set data.image_size <= {res}.")
  if name == "captioned_folder":
    folder = data_cfg.get("folder")
    # A built folder is read as built, even if the folder changed (it warns) or is gone.
    built = bool(folder) and tfds_utils.is_prepared(folder_builder(data_cfg))
    if not built and folder and (why := output_files.why_closed(os.path.expanduser(folder),
                                                                f"data.folder {folder!r}")):
      raise ValueError(why)  # not "needs ... an existing folder"
    if not built and (not folder or not os.path.isdir(os.path.expanduser(folder))):
      raise ValueError(f"captioned_folder needs data.folder set to an existing folder of images "
                       f"with captions.jsonl or captions.csv (got {folder!r}; no build of it in "
                       f"data.data_dir={data_cfg.get('data_dir')!r}).")
    if not built:
      from llmimg_jax.data import caption_files  # pylint: disable=g-import-not-at-top
      caption_files.check_caption_files(os.path.expanduser(folder))
    store = int(data_cfg.get("store_size") or 0)
    if store and store < data_cfg.image_size:
      raise ValueError(f"data.store_size={store} < data.image_size={data_cfg.image_size}: "
                       "images would be upsampled; raise store_size or set it to 0.")


def dataset_id(data_cfg: ml_collections.ConfigDict) -> str:
  """Names the records a data config reads: 'captioned_shapes/tiny_32', 'captioned_folder:/abs'."""
  if data_cfg.name == "captioned_shapes":
    return f"captioned_shapes/{data_cfg.config}"
  if data_cfg.name == "captioned_folder":
    return f"captioned_folder:{os.path.abspath(os.path.expanduser(data_cfg.folder))}"
  return str(data_cfg.name)


def folder_builder(data_cfg: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The captioned_folder builder of `data_cfg` (folder, store_size or image_size, max_pixels)."""
  from llmimg_jax.data import captioned_folder  # pylint: disable=g-import-not-at-top
  size = int(data_cfg.get("store_size") or 0) or int(data_cfg.image_size)
  return captioned_folder.CaptionedFolder(
      config=captioned_folder.folder_config(data_cfg.folder, size,
                                            int(data_cfg.get("max_pixels") or 0)),
      data_dir=_data_dir(data_cfg))


def builder(data_cfg: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `data_cfg`'s dataset (not built here)."""
  data_dir, name = _data_dir(data_cfg), data_cfg.name
  if name == "captioned_shapes":
    from llmimg_jax.data import captioned_shapes  # pylint: disable=g-import-not-at-top
    num_proc = int(data_cfg.get("build_num_proc") or 0) or None
    return captioned_shapes.CaptionedShapes(config=data_cfg.config, data_dir=data_dir,
                                            num_proc=num_proc)
  if name == "captioned_folder":
    return folder_builder(data_cfg)
  from llmimg_jax.data import coco  # pylint: disable=g-import-not-at-top
  return coco.coco_builder(data_dir)


def is_built(data_cfg: ml_collections.ConfigDict) -> bool:
  """Whether `data_cfg`'s dataset is built (prepared) in its data_dir."""
  validate_data_config(data_cfg)
  return tfds_utils.is_prepared(builder(data_cfg))


def load_source(data_cfg: ml_collections.ConfigDict, split: str = "train") -> ExampleSource:
  """The random-access source of `split`; builds captioned_shapes/captioned_folder if missing."""
  validate_data_config(data_cfg)
  dataset = builder(data_cfg)
  name, data_dir = data_cfg.name, _data_dir(data_cfg)
  prepared = tfds_utils.is_prepared(dataset)
  if not prepared:
    log.info("Building %s/%s into %s.", name, dataset.builder_config.name if
             dataset.builder_config else "", data_dir)
  if name == "coco_captions":
    from llmimg_jax.data import coco  # pylint: disable=g-import-not-at-top
    coco.download_and_prepare(dataset, data_dir)  # a failed download: one clear error
  else:
    try:
      tfds_utils.build(dataset, dataset_id(data_cfg), data_dir)
    except tfds_utils.BuiltMeanwhile as e:
      log.info("%s; reading that build.", e)
      dataset, prepared = builder(data_cfg), True  # from the folder as it was then
  if prepared and name == "captioned_folder":
    from llmimg_jax.data import captioned_folder  # pylint: disable=g-import-not-at-top
    captioned_folder.warn_if_changed(dataset)
  splits = list(dataset.info.splits.keys())
  if splits and split not in splits:  # (empty under tfds.testing.mock_data)
    raise ValueError(f"{name}/{dataset.builder_config.name} has no split {split!r}; "
                     f"available: {splits}.")
  return ExampleSource(dataset.as_data_source(split), name, split, splits,
                       build_dir=os.fspath(dataset.data_dir))


# ---------------------------------------------------------------------------------------------
# Transforms


class Augment(grain.transforms.RandomMap):
  """Square crop (random or centre), resize, optional flip, and one random caption."""

  def __init__(self, image_size: int, crop_min: float = 0.0, flip: bool = False):
    self.image_size, self.crop_min, self.flip = int(image_size), float(crop_min), bool(flip)

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    image = element["image"]  # [h, w, 3]
    if 0.0 < self.crop_min < 1.0:
      h, w = image.shape[:2]
      side = max(1, int(round(min(h, w) * rng.uniform(self.crop_min, 1.0))))
      y0, x0 = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
      image = resize(np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side]), self.image_size)
    else:
      image = center_crop_resize(image, self.image_size)
    captions = element["captions"]
    caption = captions[int(rng.integers(len(captions)))]
    if self.flip and rng.random() < 0.5:
      image, caption = np.ascontiguousarray(image[:, ::-1]), swap_left_right(caption)
    return {"image": image, "caption": caption, "index": element["index"]}


class Tokenize(grain.transforms.Map):
  """Batched captions -> input_ids / attention_mask (runs in the loader workers). Captions longer
  than the tokenizer's max_length are truncated with one warning per process, not one per batch
  (a dataset of long captions would log one every training step)."""

  def __init__(self, tokenizer: TextTokenizer):
    self.tokenizer = tokenizer
    self.warned = False

  def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    tokens, lengths = self.tokenizer.tokenize([str(c) for c in element["caption"]])
    max_length = self.tokenizer.max_length
    if not self.warned and max(lengths, default=0) > max_length:
      self.warned = True
      log.warning("Captions longer than config.text.max_length=%d tokens are truncated (one had "
                  "%d tokens); said once, for the first such batch. Raise config.text.max_length "
                  "to keep them whole.", max_length, max(lengths))
    return {"image": element["image"],  # [b, R, R, 3]
            "input_ids": tokens["input_ids"].astype(np.int32),  # [b, L]
            "attention_mask": tokens["attention_mask"].astype(np.int32),  # [b, L]
            "index": np.asarray(element["index"], np.int64)}  # [b]


# ---------------------------------------------------------------------------------------------
# Iterator and global batches


def sampler_seed(seed: int) -> int:
  """The 32-bit seed grain's sampler gets for a run's `seed` (see the module docstring)."""
  return int(np.random.SeedSequence([int(seed), _SAMPLER_SALT]).generate_state(1)[0])


_SAMPLER_SALT = 0x6772616E  # "gran": sampler_seed's, not another use of the run's seed


def make_iterator(data_cfg: ml_collections.ConfigDict, tokenizer: TextTokenizer, *,
                  batch_size_per_host: int, seed: int,
                  split: str = "train", shuffle: bool = True, num_epochs: int | None = None,
                  process_index: int | None = None, process_count: int | None = None,
                  source: ExampleSource | None = None) -> grain.DataLoaderIterator:
  """Batches of this host's slice of the global batches; infinite unless `num_epochs` is set
  (which needs data.num_workers=0; whole global batches only: the last
  len(source) * num_epochs % global batch records of the order are left out, with a warning).

  Every host walks the same seeded global order and takes its contiguous rows of each global
  batch (HostSliceSampler), so the global batch sequence is the same for any number of hosts.
  (With data.num_workers > 0 grain batches within each worker, so batches are deterministic
  and resumable but depend on the worker and host counts.)
  The iterator's `get_state()`/`set_state()` (or orbax with `grain.checkpoint.CheckpointSave/
  CheckpointRestore`) resume with the exact same batches.
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, {process_count}).")
  source = source if source is not None else load_source(data_cfg, split)
  global_batch = batch_size_per_host * process_count
  if num_epochs is None and len(source) < 2:  # the training stream: one image in every row
    raise tfds_utils.DatasetError(
        f"{source!r} has {len(source)} record; training needs at least 2 (D learns from "
        "mismatched image-caption pairs): add images to the dataset.")
  if num_epochs is None and len(source) < global_batch:
    log.warning("%r has %d records, fewer than one global batch of %d (%d host(s) x %d): every "
                "batch repeats records, and some of D's mismatched pairs match. Lower "
                "train.batch_size or add images.", source, len(source), global_batch,
                process_count, batch_size_per_host)
  if num_epochs is not None and len(source) * num_epochs < global_batch:
    raise tfds_utils.DatasetError(
        f"{source!r} has {len(source)} records, fewer than one global batch of {global_batch} "
        f"({process_count} host(s) x {batch_size_per_host}): lower the batch size or use a "
        "bigger split.")
  num_workers = int(data_cfg.get("num_workers", 0) or 0)
  if num_workers > 0 and num_epochs is not None:
    raise ValueError(
        f"num_epochs={num_epochs} with data.num_workers={num_workers}: grain batches within each "
        "worker, so every worker would drop its last partial batch (up to all of a small split). "
        "Read a fixed number of epochs with data.num_workers=0 (which drops only the last "
        "partial global batch).")
  if (num_epochs is not None and process_index == 0
      and (left_out := len(source) * num_epochs % global_batch)):  # of the global order: once
    log.warning("%r read for %d epoch(s) in global batches of %d leaves out the last %d "
                "records of its order (whole batches only).", source, num_epochs, global_batch,
                left_out)
  if num_workers > 0:
    _ensure_absl_flags_parsed()
  sampler = HostSliceSampler(
      grain.samplers.IndexSampler(num_records=len(source), shuffle=shuffle,
                                  seed=sampler_seed(seed),
                                  num_epochs=num_epochs),
      batch_size_per_host, process_index, process_count)
  operations = [
      Augment(data_cfg.image_size, float(data_cfg.get("random_crop", 0.0)),
              bool(data_cfg.get("random_flip", False))),
      grain.transforms.Batch(batch_size=batch_size_per_host, drop_remainder=True),
      Tokenize(tokenizer),
  ]
  loader = grain.DataLoader(
      data_source=source, sampler=sampler, operations=operations,
      worker_count=num_workers,
      worker_buffer_size=int(data_cfg.get("worker_buffer_size", 1) or 1),
      shard_options=grain.sharding.NoSharding(),  # the sampler already slices per host
      read_options=_read_options(data_cfg))
  return iter(loader)


def keys_as_flags(message: str, keys: tuple[str, ...]) -> str:
  """`message` (a data config check's) naming the flags --KEY where it names the keys data.KEY:
  a command whose flags set them (prepare, evaluate.py). train.py's --config.data.KEY stays."""
  return re.sub(rf"(?<!--config\.)\bdata\.({'|'.join(keys)})\b", r"--\1", message)


def close_iterator(data_iter: grain.DataLoaderIterator) -> None:
  """Stops the iterator's grain workers and frees the batches they had buffered in shared memory
  (else reported as leaked at exit: google/grain#1031). The iterator is not read again.
  grain 0.2's DataLoaderIterator has no close(); the dataset iterator it wraps has."""
  close = getattr(getattr(data_iter, "_iterator", None), "close", None)
  if close is not None:
    close()


def _read_options(data_cfg) -> grain.ReadOptions:
  """grain's read threads (default 16) with two buffered records each, not grain's 500: for
  every record it returns, grain 0.2's prefetch iterator checks each buffered read for being done
  (`_measure_prefetch_depth`), on the thread that trains. More buffered records than threads
  read no faster."""
  threads = int(data_cfg.get("read_threads", 0) or 0) or grain.ReadOptions().num_threads
  return grain.ReadOptions(
      num_threads=threads,
      prefetch_buffer_size=int(data_cfg.get("read_buffer_size", 0) or 0) or 2 * threads)


def _ensure_absl_flags_parsed() -> None:
  """Grain's worker processes read absl flags; outside `absl.app.run` nothing parsed them."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
