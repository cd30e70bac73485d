"""`captioned_shapes`: a procedural TFDS dataset of coloured shapes with varied captions.

Built locally (no downloads, no TensorFlow) into array_record files. Splits: `train`, `test` and
`holdout`; holdout objects use only the (shape, colour) pairs in `shapes.HOLDOUT_PAIRS`, which
train and test never contain. The colour-only configs (`colors_*`) have one large blob per image
whose captions name only its colour, and no holdout split.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import multiprocessing
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from llmimg_jax import cpus
from llmimg_jax.data import shapes
from llmimg_jax.data.tfds_utils import DeadBuildsMixin, LocalCodePathMixin, LocalDatasetInfo

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  resolution: int = 32
  num_train: int = 50_000
  num_test: int = 2_000
  num_holdout: int = 2_000
  colors_only: bool = False
  num_captions: int = 3
  seed: int = 0
  max_objects: int = shapes.MAX_OBJECTS
  object_scale: float = 1.0
  cells: tuple[int, ...] | None = None  # the cells objects may occupy; None = all nine

  def split_sizes(self) -> dict[str, int]:
    """Records per split; a split of none (colors_*' holdout) is not built."""
    sizes = {"train": self.num_train, "test": self.num_test, "holdout": self.num_holdout}
    return {split: n for split, n in sizes.items() if n > 0}


def _config(name: str, resolution: int, num_train: int, num_test: int, num_holdout: int,
            colors_only: bool = False, max_objects: int = shapes.MAX_OBJECTS,
            object_scale: float = 1.0, cells: tuple[int, ...] | None = None) -> ShapesConfig:
  kind = ("one colour blob" if colors_only else
          f"1-{max_objects} shapes" if max_objects > 1 else f"one shape (x{object_scale} size)")
  if cells is not None:
    kind += f" in cell(s) {', '.join(map(str, cells))}"
  return ShapesConfig(
      name=name, resolution=resolution, num_train=num_train, num_test=num_test,
      num_holdout=num_holdout, colors_only=colors_only, max_objects=max_objects,
      object_scale=object_scale, cells=cells,
      description=f"{resolution}px, {kind}; {num_train} train, {num_test} test, "
                  f"{num_holdout} holdout images.")


BUILDER_CONFIGS = [
    _config("32", 32, 50_000, 2_000, 2_000),
    _config("64", 64, 50_000, 2_000, 2_000),
    _config("128", 128, 50_000, 2_000, 2_000),
    _config("32_small", 32, 2_000, 200, 200),
    _config("64_small", 64, 2_000, 200, 200),
    _config("tiny_32", 32, 256, 64, 64),
    _config("colors_32", 32, 2_000, 200, 0, colors_only=True),
    _config("colors_64", 64, 2_000, 200, 0, colors_only=True),
    # One larger shape per image (shapes readable at 32px): shapes_quick's data before center_32.
    _config("single_32", 32, 50_000, 2_000, 2_000, max_objects=1, object_scale=1.5),
    # One shape in the centre cell, drawn 2x larger: only shape, colour and size to learn
    # (shapes_quick's data: shapes emerge within its 4000 steps; on single_32 a 6000-step run,
    # at a quarter of its learning rates, learned none: benchmarks/RESULTS.md).
    _config("center_32", 32, 50_000, 2_000, 2_000, max_objects=1, object_scale=2.0, cells=(4,)),
]


def builder_config(name: str | None, given: str) -> ShapesConfig:
  """The config called `name`; a ValueError naming `given` (the flag or key that chose it) and
  the configs there are, for any other name."""
  for config in BUILDER_CONFIGS:
    if config.name == name:
      return config
  raise ValueError(f"{given}: captioned_shapes has no config {name!r}; pick one of "
                   f"{sorted(c.name for c in BUILDER_CONFIGS)}.")


def default_num_proc() -> int:
  """Worker processes used to render: one per usable core (cpus.usable_cpus), at most 8; override
  with LLMIMG_DATA_NUM_PROC (1 = in process)."""
  env = os.environ.get("LLMIMG_DATA_NUM_PROC")
  if not env:
    return min(8, cpus.usable_cpus())
  try:
    return int(env)
  except ValueError:
    raise ValueError(f"LLMIMG_DATA_NUM_PROC={env!r} is not a whole number: set it to the number "
                     "of processes that render captioned_shapes (1 = in this process), or unset "
                     "it for the default.") from None


class CaptionedShapes(DeadBuildsMixin, LocalCodePathMixin, tfds.core.GeneratorBasedBuilder):
  """Coloured shapes on a 3x3 grid over muted backgrounds, 3 captions each."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = BUILDER_CONFIGS
  DEFAULT_CONFIG_NAME = "32_small"

  def __init__(self, *, num_proc: int | None = None, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    self._num_proc = default_num_proc() if num_proc is None else int(num_proc)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return LocalDatasetInfo(
        builder=self,
        description=__doc__,
        features=features_of(self.builder_config.resolution),
        metadata=tfds.core.MetadataDict(
            shapes=list(shapes.SHAPES), colors=list(shapes.COLORS), sizes=list(shapes.SIZES),
            holdout_pairs=[list(p) for p in shapes.HOLDOUT_PAIRS]),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split, n)
            for split, n in self.builder_config.split_sizes().items()}

  def _generate_examples(self, split: str, num_examples: int):
    """Sequential reference path; `_generate_splits` writes the same examples in parallel."""
    for i in range(num_examples):
      yield i, _render(self.builder_config, split, i)

  def _generate_splits(self, dl_manager, download_config) -> list[tfds.core.SplitInfo]:
    """Renders and writes array_record shards in worker processes (TFDS's generic path
    serializes every example in the main process, which caps it at a few hundred images/s)."""
    del dl_manager, download_config
    self._remove_dead_builds()
    cfg = self.builder_config
    if self.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
      raise ValueError(f"captioned_shapes writes array_record only, not {self.info.file_format}.")
    tasks, templates, sizes = [], {}, cfg.split_sizes()
    for split, n in sizes.items():
      num_shards = max(1, -(-n // _SHARD_SIZE))
      templates[split] = self._get_filename_template(split)
      for k in range(num_shards):
        path = os.fspath(templates[split].sharded_filepath(shard_index=k, num_shards=num_shards))
        tasks.append((cfg, split, k * n // num_shards, (k + 1) * n // num_shards, path))
    results = {}
    total = sum(sizes.values())
    with tqdm.tqdm(total=total, desc=f"captioned_shapes/{cfg.name}", unit="img") as bar:
      if self._num_proc <= 1 or total < _MIN_PARALLEL:  # spawning workers costs seconds
        outputs = map(_write_shard, tasks)
      else:
        outputs = _write_shards_in_processes(tasks, min(self._num_proc, len(tasks)))
      for task, (count, num_bytes) in zip(tasks, outputs):
        results[task[-1]] = (count, num_bytes)
        bar.update(count)
    infos = []
    for split in sizes:
      shard_tasks = [t for t in tasks if t[1] == split]
      infos.append(tfds.core.SplitInfo(
          name=split, shard_lengths=[results[t[-1]][0] for t in shard_tasks],
          num_bytes=sum(results[t[-1]][1] for t in shard_tasks),
          filename_template=templates[split]))
    return infos


_SHARD_SIZE = 2_500
_MIN_PARALLEL = 4_000


@functools.lru_cache(maxsize=None)
def features_of(resolution: int) -> tfds.features.FeaturesDict:
  gt = {f: tfds.features.Tensor(shape=(shapes.MAX_OBJECTS,), dtype=np.int32)
        for f in ("shape", "color", "size", "cell")}
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=(resolution, resolution, 3), dtype=np.uint8,
                                    encoding=tfds.features.Encoding.ZLIB),  # [R, R, 3]
      "captions": tfds.features.Sequence(tfds.features.Text()),
      "index": tfds.features.Scalar(dtype=np.int64),  # generation index within the split
      "num_objects": tfds.features.Scalar(dtype=np.int32),
      **gt,  # [MAX_OBJECTS] ids into SHAPES / COLORS / SIZES, cell = 3 * row + col; -1 = none
  })


def _render(cfg: ShapesConfig, split: str, index: int) -> dict:
  spec = shapes.SceneSpec(resolution=cfg.resolution, colors_only=cfg.colors_only, seed=cfg.seed,
                          max_objects=cfg.max_objects, object_scale=cfg.object_scale,
                          cells=cfg.cells)
  return shapes.render_example(spec, split, index, num_captions=cfg.num_captions)


def _write_shards_in_processes(tasks: list, num_proc: int) -> Iterator[tuple[int, int]]:
  """_write_shard of each task, in order, from `num_proc` spawned processes; in this process if
  they die (e.g. in a script without `if __name__ == "__main__":`, which each spawned process
  runs again, or killed for memory)."""
  done = 0
  pool = concurrent.futures.ProcessPoolExecutor(
      num_proc, mp_context=multiprocessing.get_context("spawn"))
  try:
    for result in pool.map(_write_shard, tasks):
      yield result
      done += 1
  except concurrent.futures.process.BrokenProcessPool as e:
    pool.shutdown(wait=True)  # the pool terminates the workers: none still writes a shard
    log.warning(
        "captioned_shapes: the build's worker processes died (%s); building the remaining %d "
        "shard(s) in this process (slower). In a script, put the build under `if __name__ == "
        "'__main__':` to build in parallel.", e, len(tasks) - done)
  except BaseException:  # Ctrl-C, a worker's error: stop the other workers, drop queued shards
    for process in list((getattr(pool, "_processes", None) or {}).values()):
      process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)
    raise
  else:
    pool.shutdown(wait=True)
    return
  yield from map(_write_shard, tasks[done:])


def _write_shard(task) -> tuple[int, int]:
  """Writes examples [start, stop) of a split to one array_record file; (count, bytes)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  cfg, split, start, stop, path = task
  features = features_of(cfg.resolution)
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  num_bytes = 0
  try:
    for i in range(start, stop):
      record = features.serialize_example(_render(cfg, split, i))
      writer.write(record)
      num_bytes += len(record)
  finally:
    writer.close()
  return stop - start, num_bytes
