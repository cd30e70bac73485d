"""Each host's slice of the global batches, and its saved input position read by another number
of hosts.

grain saves one iterator state per process (STEP/data/process_I-of-N.json). With
data.num_workers=0 a position is a count of global batches, whatever the number of hosts, so a
run saved by N hosts resumes on any other number with the same global batch size.
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


class ProcessCountMismatchError(ValueError):
  """The input-iterator state was saved by another number of processes (hosts) with grain
  worker processes, whose positions depend on the host count."""

  def __init__(self, message: str, saved: int):
    super().__init__(message)
    self.saved = saved


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

  Raises ProcessCountMismatchError when they were saved with grain worker processes, and
  ValueError when they are not states of HostSliceSampler iterators at one position (damage).
  Given another global batch size, or states of another sampler (another version's code), it
  returns a saved state as it is, which grain then refuses as saved for another sampler (the
  caller names the changed config)."""
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
  if workers:
    raise ProcessCountMismatchError(
        f"the input-iterator state in {data_dir} was saved by {saved} process(es) with "
        f"data.num_workers={workers}, which batch within each worker, so the position depends on "
        "the host count", saved)
  samplers = [_REPR.fullmatch(state["sampler"]) for state in states]
  if not any(samplers):  # another version's sampler (code, not damage): grain refuses it
    return json.dumps(states[0]).encode()
  batches = set()
  for i, (state, sampler) in enumerate(zip(states, samplers)):
    if (sampler is None or int(state["worker_count"]) != 0
        or (int(sampler["h"]), int(sampler["p"])) != (i, saved)
        or (sampler["sampler"], sampler["b"]) != (samplers[0]["sampler"], samplers[0]["b"])
        or state["data_source"] != states[0]["data_source"]):
      raise ValueError(f"{data_dir}/process_{i}-of-{saved}.json is not host {i}'s state of "
                       "the saved input pipeline (the file was edited)")
    done, rest = divmod(int(state["last_seen_indices"]["0"]) + 1, int(sampler["b"]))
    if rest:
      raise ValueError(f"{data_dir}/process_{i}-of-{saved}.json stops inside a batch")
    batches.add(done)
  if len(batches) != 1:
    raise ValueError(f"the hosts' input positions in {data_dir} differ: {sorted(batches)} batches")
  this = _REPR.fullmatch(current["sampler"])
  if this is None or int(this["b"]) * int(this["p"]) != int(samplers[0]["b"]) * saved:
    return json.dumps(states[0]).encode()
  b = int(this["b"])  # this host's rows of each global batch
  sampler = (f"HostSliceSampler({samplers[0]['sampler']}, batch_size_per_host={b}, "
             f"process={this['h']}/{this['p']})")
  return json.dumps({**states[0], "sampler": sampler,
                     "last_seen_indices": {"0": batches.pop() * b - 1}}).encode()
