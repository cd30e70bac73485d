"""Random access to a dataset split's records as the pipeline reads them."""
from __future__ import annotations

import multiprocessing
import os
import re
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmimg_jax.data import tfds_utils


# What array_record's reader says of changed bytes; other errors (a file limit, a network file
# system's) are raised as they are: deleting the build would not help.
_DAMAGED = re.compile(r"Corrupted|Riegeli|DATA_LOSS", re.IGNORECASE)


class ExampleSource:
  """Random access to {'image': uint8 [h, w, 3], 'captions': list[str], 'index': int64}.

  `index` is the record's position in this source. Picklable (grain worker processes).
  """

  def __init__(self, source, name: str, split: str, all_splits: Sequence[str] = (),
               build_dir: str | None = None):
    self._source = source
    self.name, self.split = name, split
    self.all_splits = tuple(all_splits)  # every split of the dataset
    self.build_dir = build_dir  # the TFDS build the records are read from, where known

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    try:
      ex = self._source[index]
    except RuntimeError as e:  # array_record's reader: "Corrupted Riegeli/records file: ..."
      if self.build_dir is None or not _DAMAGED.search(str(e)):
        raise
      raise tfds_utils.DatasetError(
          f"{self.name}/{self.split} record {index} cannot be read from {self.build_dir} "
          f"({type(e).__name__}: {' '.join(str(e).split())[:200]}): the build is damaged (a disk "
          f"error, or a copy cut short). Delete it ({tfds_utils.delete_command(self.build_dir)}) "
          "and rerun to build it again; a run resumes from its last checkpoint.") from e
    if self.name == "coco_captions":
      from llmimg_jax.data.coco import coco_to_example  # pylint: disable=g-import-not-at-top
      ex = coco_to_example(ex)
    captions = [_text(c) for c in ex["captions"]]
    if not captions:
      raise ValueError(f"{self.name}/{self.split} record {index} has no captions.")
    return {"image": np.asarray(ex["image"], np.uint8), "captions": captions,
            "index": np.int64(index)}

  def __repr__(self) -> str:
    return f"ExampleSource({self.name}, split={self.split!r}, {len(self)} records)"

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    if (parent := multiprocessing.parent_process()) is not None:  # a grain worker, sent this
      # A SIGTERM to every process of a job (Slurm's scancel, `kill -TERM -PGID`) or a Ctrl-C in
      # a terminal (SIGINT to its process group) is the main process's to handle: it finishes
      # the step and saves, reading the workers' batches. Grain still stops its workers (an
      # event, then SIGKILL after a timeout).
      signal.signal(signal.SIGTERM, signal.SIG_IGN)
      signal.signal(signal.SIGINT, signal.SIG_IGN)
      _exit_with(parent.pid)


_WATCHED: set[int] = set()  # the parents this worker process exits with


def _exit_with(parent: int, poll_s: float = 1.0) -> None:
  """Ends this worker process once `parent` is gone: one killed with SIGKILL (or by the OOM
  killer) cannot stop its workers, which ignore SIGTERM, and they ran on (~240 MB each, and the
  resource tracker they hold open), a set per crash and rerun."""
  if parent in _WATCHED:
    return
  _WATCHED.add(parent)

  def watch() -> None:
    while os.getppid() == parent:  # the orphan's parent is init, or a subreaper
      time.sleep(poll_s)
    os._exit(1)  # pylint: disable=protected-access

  threading.Thread(target=watch, name="exit_with_parent", daemon=True).start()


def _text(t) -> str:
  return t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t)
