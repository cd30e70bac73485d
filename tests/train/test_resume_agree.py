"""Two processes (jax.distributed on 127.0.0.1, gloo) resume from checkpoints where one host's
input position is of another step, or where one host does not see the newest step: both stop
with the hosts and steps named (the step lists before restoring), instead of training on from
disagreeing points. One process
stops likewise on a position of another step than its checkpoint's."""
from __future__ import annotations

import json
import shutil
import sys

import jax
import numpy as np
import pytest

from llmimg_jax.data.pipeline import close_iterator, load_source, make_iterator
from llmimg_jax.train import checkpoint, resume_agree
from llmimg_jax.train.resume_agree import ResumeDisagreesError
from llmimg_jax.train.state import build_text
from tests.train.cli_utils import Proc, _devices_env, _free_port
from tests.train.utils import tiny_config

_RESUME = """
import shutil, sys
from pathlib import Path
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
import numpy as np
from llmimg_jax.data.pipeline import make_iterator
from llmimg_jax.train import checkpoint, hosts
from llmimg_jax.train.state import build_text
from tests.train.utils import tiny_config

config = tiny_config(sys.argv[3])
tokenizer = build_text(config)[0]
state = {"w": np.arange(3, dtype=np.float32)}
for how, workdir in zip(sys.argv[4::2], map(Path, sys.argv[5::2])):  # one run after the other
  it = make_iterator(config.data, tokenizer, batch_size_per_host=4, seed=0)
  manager = checkpoint.make_manager(workdir, config)
  for step in (2, 4):
    next(it), next(it)
    checkpoint.save(manager, step, state, it, config)
  manager.wait_until_finished()
  steps = workdir / "checkpoints"
  def edit():
    if how == "position":  # host 1's position of step 2 in step 4
      shutil.copy(steps / "2/data/process_1-of-2.json", steps / "4/data/process_1-of-2.json")
  hosts.on_host_0(edit, f"edited_{how}", "edit")
  manager = checkpoint.make_manager(workdir, config)
  if how == "listing" and jax.process_index() == 1:  # step 4 not shown to host 1 yet
    manager.all_steps = lambda read=False: [2]
  it = make_iterator(config.data, tokenizer, batch_size_per_host=4, seed=0)
  abstract = {"w": jax.ShapeDtypeStruct((3,), np.float32)}
  try:
    checkpoint.restore_latest(manager, abstract, it, config=config)
    print(how, "restored", it.get_state().decode(), flush=True)
  except Exception as e:
    print(how, "raised", type(e).__name__, e, flush=True)
"""


def test_hosts_resuming_at_different_points_stop_together(shapes_data_dir, tmp_path):
  """One pair of processes resumes three runs in turn: host 1's position of another step, host 1
  not listing the newest step, and both agreeing."""
  config = tiny_config(shapes_data_dir)
  load_source(config.data)  # built here once, not by both processes
  hows = ("position", "listing", "agree")
  port = _free_port()
  procs = [Proc([sys.executable, "-c", _RESUME, f"127.0.0.1:{port}", str(i), str(shapes_data_dir),
                 *(a for how in hows for a in (how, str(tmp_path / how)))], **_devices_env(1))
           for i in range(2)]
  for i, proc in enumerate(procs):
    assert proc.finish(timeout=240) == 0, f"process {i}:\n{proc.output[-3000:]}"
  for proc in procs:
    results = {how: [line for line in proc.output.splitlines() if line.startswith(f"{how} ")]
               for how in hows}
    assert all(len(lines) == 1 for lines in results.values()), proc.output[-3000:]
    position, listing, agree = (lines[0] for lines in results.values())
    assert agree.startswith("agree restored"), proc.output[-3000:]
    assert position.startswith("position raised ResumeDisagreesError The hosts resumed from"), (
        proc.output[-3000:])
    assert ("(host 0: step 4 with the input position of 4 batches; host 1: step 4 with the "
            "input position of 2 batches (another position than host 0's))") in position
    # before restoring anything (at scale, minutes)
    assert listing.startswith("listing raised ResumeDisagreesError The hosts list different "
                              "checkpoints"), proc.output[-3000:]
    assert "(host 0: 2 steps, the newest 4; host 1: 1 step, the newest 2)" in listing
    assert "Nothing was restored or trained." in listing


class _Iterator:
  def __init__(self, **state):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(self.state).encode()


def test_positions_compare_what_every_host_counts_alike():
  """Each host's sampler names its process: only the positions are compared. The batches read
  are counted with and without grain workers (states as grain 0.2.18 writes them after 7 and 5
  batches of 4 rows)."""
  def state(process: int, seen: dict, workers: int = 0, last: int = -1) -> _Iterator:
    return _Iterator(last_seen_indices=seen, last_worker_index=last, worker_count=workers,
                     sampler=f"HostSliceSampler(S, batch_size_per_host=4, process={process}/2)")
  assert resume_agree._position(state(0, {"0": 15})) == resume_agree._position(state(1, {"0": 15}))
  assert resume_agree._position(state(0, {"0": 15}))[1] == 4
  assert resume_agree._position(state(0, {"0": -1}))[1] == 0
  assert resume_agree._position(state(0, {"0": 15})) != resume_agree._position(state(1, {"0": 7}))
  workers = [state(h, {"0": 30, "1": 23}, workers=2, last=0) for h in range(2)]
  assert resume_agree._position(workers[0]) == resume_agree._position(workers[1])
  assert resume_agree._position(workers[0])[1] == 7
  assert resume_agree._position(state(0, {"0": 21, "1": 22, "2": 11}, workers=3, last=1))[1] == 5
  assert resume_agree._position(state(0, {"0": -3, "1": -2, "2": -1}, workers=3))[1] == 0
  assert resume_agree._position(workers[0]) != resume_agree._position(
      state(1, {"0": 30, "1": 23}, workers=2, last=1))
  # not at the end of a batch, or not this sampler: not counted
  assert resume_agree._position(state(0, {"0": 13}))[1] == -1
  assert resume_agree._position(state(0, {"0": 9, "1": 13}, workers=2))[1] == -1
  assert resume_agree._position(_Iterator(last_seen_indices={"0": 15}, worker_count=0,
                                          sampler="IndexSampler()"))[1] == -1
  assert resume_agree._position(None) == (0, -1)


@pytest.mark.parametrize("workers", [0, 2])
def test_one_host_refuses_a_position_of_another_step(shapes_data_dir, tmp_path, workers):
  """Step 2's position file copied into step 4: a run on one host has no other host to compare
  with, but a position of 2 batches is not step 4's. Restoring stops with both named and moves
  nothing; as saved, the same checkpoint restores."""
  config = tiny_config(shapes_data_dir)
  config.data.num_workers = workers
  tokenizer = build_text(config)[0]
  iterators = []

  def iterator():
    iterators.append(make_iterator(config.data, tokenizer, batch_size_per_host=4, seed=0))
    return iterators[-1]
  it, manager = iterator(), checkpoint.make_manager(tmp_path, config)
  for step in (2, 4):
    next(it), next(it)
    checkpoint.save(manager, step, {"w": np.arange(3, dtype=np.float32)}, it, config)
  manager.wait_until_finished()
  abstract = {"w": jax.ShapeDtypeStruct((3,), np.float32)}
  assert checkpoint.restore_latest(manager, abstract, iterator(), config=config) is not None
  steps = tmp_path / "checkpoints"
  shutil.copy(steps / "2/data/process_0-of-1.json", steps / "4/data/process_0-of-1.json")
  with pytest.raises(ResumeDisagreesError, match=r"4 is at step 4, but the input position "
                     r"restored with it .* is after 2 batches"):
    checkpoint.restore_latest(checkpoint.make_manager(tmp_path, config), abstract, iterator(),
                              config=config)
  assert sorted(p.name for p in steps.iterdir()) == ["2", "4"]
  for it in iterators:  # grain's workers stop
    close_iterator(it)
