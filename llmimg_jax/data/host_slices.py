"""Each host's slice of the global batches, and its saved input position read by another number
of hosts.

grain saves one iterator state per process (STEP/data/process_I-of-N.json). With
data.num_workers=0 a position is a count of global batches, whatever the number of hosts, so a
run saved by N hosts resumes on any other number with the same global batch size. With W grain
workers, worker w of each host batches its own sampler positions w, w + W, ... (host batch k is
worker k mod W's): after k batches every record before the block of W global batches that batch k
starts has been read, and of that block, the records of the first k mod W workers' batches, which
on another host count are the same records only in some cases (always when k is a multiple of W,
or when both counts' per-host batch sizes are).
"""
from __future__ import annotations

import json
import re
from pathlib import Path


class HostSliceSampler:
  """Host `h` of `P` reads rows [h*b, (h+1)*b) of every global batch of P*b sampler positions.

  Concatenating the hosts' batches in process order (what `to_global_batch` does) gives the
  batch a single process with batch size P*b reads: the global batches, their order and each
  record's augmentation (grain's per-record RNG follows the global position) do not depend on
  the number of hosts.
  """

  def __init__(self, sampler, batch_size_per_host: int, process_index: int, process_count: int):
    self._sampler, self._b = sampler, int(batch_size_per_host)
    self._h, self._p = int(process_index), int(process_count)
    global_batch = self._b * self._p
    self._len = len(sampler) // global_batch * self._b  # whole global batches only

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int):
    if not 0 <= index < self._len:
      raise IndexError(index)
    batch, row = divmod(index, self._b)
    return self._sampler[(batch * self._p + self._h) * self._b + row]

  def __repr__(self) -> str:  # grain checks it when restoring an iterator's state
    return (f"HostSliceSampler({self._sampler!r}, batch_size_per_host={self._b}, "
            f"process={self._h}/{self._p})")


_REPR = re.compile(r"HostSliceSampler\((?P<sampler>.*), batch_size_per_host=(?P<b>\d+), "
                   r"process=(?P<h>\d+)/(?P<p>\d+)\)", re.DOTALL)
_STATE_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json")


def batch_size_per_host(state: dict) -> int | None:
  """The rows per host of each batch in a HostSliceSampler iterator's state (grain's get_state()
  as JSON); None for another sampler's."""
  sampler = _REPR.fullmatch(str(state.get("sampler", "")))
  return int(sampler["b"]) if sampler else None


def batches_read(state: dict) -> int | None:
  """Batches a HostSliceSampler iterator has returned, from grain's state (get_state() as JSON);
  None if it is not at the end of a batch (not a position this code saves) or not of this sampler.

  Worker w of W (W = 1 without workers) reads sampler positions w, w + W, ..., batching its own:
  its last position seen, initially w - W, counts its rows.
  """
  rows = batch_size_per_host(state)
  workers = max(int(state.get("worker_count", 0)), 1)
  seen = {str(k): int(v) for k, v in state.get("last_seen_indices", {}).items()}
  if not rows or sorted(seen) != sorted(str(w) for w in range(workers)):
    return None
  total = 0
  for w in range(workers):
    done, rest = divmod((seen[str(w)] - w) // workers + 1, rows)
    if rest or done < 0:
      return None
    total += done
  return total


def _position(batches: int, workers: int, rows: int) -> dict:
  """grain's position fields after `batches` batches of `rows` rows with `workers` workers (as
  in batches_read, no workers counts as one)."""
  workers = max(workers, 1)
  done = [len(range(w, batches, workers)) for w in range(workers)]  # each worker's batches
  return {"last_seen_indices": {str(w): w + workers * (n * rows - 1) for w, n in enumerate(done)},
          "last_worker_index": (batches - 1) % workers if batches % workers else -1}


def _records_read(batches: int, workers: int, rows: int, hosts: int) -> set[int]:
  """The global positions read of the last started block of `workers` global batches."""
  block, started = divmod(batches, workers)
  read = set()
  for h in range(hosts):
    for w in range(started):
      for m in range(block * rows, (block + 1) * rows):
        position = w + workers * m  # in this host's slice
        read.add((position // rows * hosts + h) * rows + position % rows)
  return read


class ProcessCountMismatchError(ValueError):
  """The input-iterator state was saved by another number of processes (hosts) with grain
  worker processes at a point that this host count's workers cannot resume."""

  def __init__(self, message: str, saved: int, reason: str):
    super().__init__(message)
    self.saved, self.reason = saved, reason


def saved_process_count(data_dir: Path) -> int | None:
  """The number of processes whose iterator states `data_dir` holds (None: no state files)."""
  counts = sorted({int(m.group(2)) for f in Path(data_dir).iterdir()
                   if (m := _STATE_FILE.fullmatch(f.name))}) if Path(data_dir).is_dir() else []
  if len(counts) > 1:
    raise ValueError(f"{data_dir} holds iterator states of {counts} processes; one run saves "
                     "one count (the directory was edited)")
  return counts[0] if counts else None


def resliced_state(data_dir: Path, current: bytes) -> bytes:
  """The state that puts this host's iterator (whose `get_state()` is `current`) at the position
  of the states in `data_dir`, saved by another number of hosts with the same global batch size.

  Raises ProcessCountMismatchError when they were saved with grain worker processes at a point
  whose records read differ on this host count (see the module docstring), and ValueError when
  they are not states of HostSliceSampler iterators at one position (damage). Given another
  global batch size or worker count, or states of another sampler (another version's code), it
  returns a saved state as it is, which grain then refuses as saved for another sampler or
  worker count (the caller names the changed config)."""
  saved = saved_process_count(data_dir)
  states = []
  for i in range(saved or 0):
    path = Path(data_dir) / f"process_{i}-of-{saved}.json"
    if not path.is_file():
      raise FileNotFoundError(f"{path} is missing: host {i}'s input position was not saved")
    states.append(json.loads(path.read_text()))
  if not states:
    raise FileNotFoundError(f"no input-iterator state (process_*-of-*.json) in {data_dir}")
  current, workers = json.loads(current), int(states[0]["worker_count"])
  if int(current["worker_count"]) != workers:  # another config: grain names the worker counts
    return json.dumps(states[0]).encode()
  samplers = [_REPR.fullmatch(state["sampler"]) for state in states]
  if not any(samplers):  # another version's sampler (code, not damage): grain refuses it
    return json.dumps(states[0]).encode()
  batches = set()
  for i, (state, sampler) in enumerate(zip(states, samplers)):
    if (sampler is None or int(state["worker_count"]) != workers
        or (int(sampler["h"]), int(sampler["p"])) != (i, saved)
        or (sampler["sampler"], sampler["b"]) != (samplers[0]["sampler"], samplers[0]["b"])
        or state["data_source"] != states[0]["data_source"]):
      raise ValueError(f"{data_dir}/process_{i}-of-{saved}.json is not host {i}'s state of "
                       "the saved input pipeline (the file was edited)")
    done = batches_read(state)
    if done is None:
      raise ValueError(f"{data_dir}/process_{i}-of-{saved}.json is not at the end of a batch "
                       "(the file was edited)")
    batches.add(done)
  if len(batches) != 1:
    raise ValueError(f"the hosts' input positions in {data_dir} differ: {sorted(batches)} batches")
  this = _REPR.fullmatch(current["sampler"])
  saved_rows, done = int(samplers[0]["b"]), batches.pop()
  if this is None or int(this["b"]) * int(this["p"]) != saved_rows * saved:
    return json.dumps(states[0]).encode()
  rows, hosts = int(this["b"]), int(this["p"])  # this host's rows of each global batch
  if workers and (_records_read(done, workers, saved_rows, saved)
                  != _records_read(done, workers, rows, hosts)):
    reason = (f"with data.num_workers={workers} (each worker batching its own records) the "
              f"records of the {done} batches read there are not those of {done} batches on "
              f"{hosts} process(es): {done} is not a multiple of {workers}, nor are both per-host "
              f"batch sizes ({saved_rows} and {rows}) multiples of {workers}")
    raise ProcessCountMismatchError(
        f"the input-iterator state in {data_dir} was saved by {saved} process(es); {reason}",
        saved, reason)
  sampler = (f"HostSliceSampler({samplers[0]['sampler']}, batch_size_per_host={rows}, "
             f"process={this['h']}/{this['p']})")
  return json.dumps({**states[0], "sampler": sampler,
                     **_position(done, workers, rows)}).encode()


def first_resliceable(data_dirs: dict[int, Path], current: bytes) -> int | None:
  """The first key of `data_dirs` (e.g. a step) whose states `resliced_state` carries over to
  this host (files read only), or None."""
  for key, data_dir in data_dirs.items():
    try:
      resliced_state(data_dir, current)
      return key
    except (ValueError, OSError, KeyError):  # refused, damaged or missing: not one to suggest
      continue
  return None
