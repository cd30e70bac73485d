"""Host slices of the global order: an input position saved by one number of hosts, resumed on
another, and the whole global batches that a fixed number of epochs reads."""
from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest

from llmimg_jax.data import host_slices, pipeline

GLOBAL_BATCH = 8


def _hosts(cfg, tok, count: int, workers: int = 0) -> list:
  """Every host's iterator of a run of `count` hosts (one seeded order, global batch 8)."""
  cfg = cfg.copy_and_resolve_references()
  cfg.num_workers = workers
  return [pipeline.make_iterator(cfg, tok, batch_size_per_host=GLOBAL_BATCH // count, seed=3,
                                 process_index=h, process_count=count) for h in range(count)]


def _global_batches(iterators, n: int) -> list[dict[str, np.ndarray]]:
  """The next `n` global batches: the hosts' batches concatenated in process order."""
  per_host = [[next(it) for _ in range(n)] for it in iterators]
  return [{k: np.concatenate([host[i][k] for host in per_host]) for k in per_host[0][i]}
          for i in range(n)]


def _save(iterators, data_dir) -> None:
  """What grain's checkpoint handler writes: one state file per process."""
  data_dir.mkdir(exist_ok=True)
  for h, it in enumerate(iterators):
    (data_dir / f"process_{h}-of-{len(iterators)}.json").write_text(it.get_state().decode())


@pytest.mark.parametrize("saved, now", [(2, 1), (1, 2), (2, 4), (4, 2)])
def test_a_position_saved_by_some_hosts_resumes_on_another_count(shapes_cfg, tokenizer, tmp_path,
                                                                 saved, now):
  before = _hosts(shapes_cfg, tokenizer, saved)
  _global_batches(before, 3)
  _save(before, tmp_path)
  expected = _global_batches(before, 2)
  assert host_slices.saved_process_count(tmp_path) == saved
  after = _hosts(shapes_cfg, tokenizer, now)
  for it in after:
    it.set_state(host_slices.resliced_state(tmp_path, it.get_state()))
  resumed = _global_batches(after, 2)
  for a, b in zip(resumed, expected):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_position_at_the_start_or_with_another_global_batch(shapes_cfg, tokenizer, tmp_path):
  _save(_hosts(shapes_cfg, tokenizer, 2), tmp_path)  # before the first batch
  one = _hosts(shapes_cfg, tokenizer, 1)[0]
  fresh = one.get_state()
  assert json.loads(host_slices.resliced_state(tmp_path, fresh)) == json.loads(fresh)
  # Another global batch size: the state comes back as saved, and grain refuses it.
  other = pipeline.make_iterator(shapes_cfg, tokenizer, batch_size_per_host=4, seed=3,
                                 process_index=0, process_count=1)
  state = host_slices.resliced_state(tmp_path, other.get_state())
  assert json.loads(state) == json.loads((tmp_path / "process_0-of-2.json").read_text())
  with pytest.raises(ValueError, match="Sampler in checkpoint does not match"):
    other.set_state(state)


def _edit(path, **changes) -> None:
  path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_states_that_are_not_one_runs_position_are_refused(shapes_cfg, tokenizer, tmp_path):
  hosts = _hosts(shapes_cfg, tokenizer, 2)
  next(hosts[0])
  _save(hosts, tmp_path)
  now = _hosts(shapes_cfg, tokenizer, 1)[0].get_state()
  with pytest.raises(ValueError, match=r"input positions in .* differ: \[0, 1\] batches"):
    host_slices.resliced_state(tmp_path, now)
  next(hosts[1])
  _save(hosts, tmp_path)
  host_slices.resliced_state(tmp_path, now)  # at one position again
  _edit(tmp_path / "process_1-of-2.json", last_seen_indices={"0": 5})
  with pytest.raises(ValueError, match=r"process_1-of-2\.json is not at the end of a batch"):
    host_slices.resliced_state(tmp_path, now)
  (tmp_path / "process_1-of-2.json").rename(tmp_path / "process_2-of-2.json")
  with pytest.raises(FileNotFoundError, match=r"process_1-of-2\.json is missing: host 1's"):
    host_slices.resliced_state(tmp_path, now)
  (tmp_path / "process_2-of-2.json").rename(tmp_path / "process_1-of-2.json")
  _edit(tmp_path / "process_1-of-2.json",
        sampler=json.loads((tmp_path / "process_0-of-2.json").read_text())["sampler"])
  with pytest.raises(ValueError, match=r"process_1-of-2\.json is not host 1's state"):
    host_slices.resliced_state(tmp_path, now)
  (tmp_path / "process_0-of-3.json").write_text("{}")
  with pytest.raises(ValueError, match=r"states of \[2, 3\] processes"):
    host_slices.saved_process_count(tmp_path)


def test_a_position_of_grain_workers_resumes_on_another_host_count(shapes_cfg, tokenizer,
                                                                    tmp_path):
  """2 workers, 2 hosts x 4 rows, 3 batches read (worker 0's second batch started the second
  block of 2 global batches) -> 1 host x 8 rows: the state is the one that host's iterator has
  after 3 batches, and both read the same records in those batches (none twice, none skipped)."""
  before = _hosts(shapes_cfg, tokenizer, 2, workers=2)
  read = _global_batches(before, 3)
  _save(before, tmp_path)
  one = _hosts(shapes_cfg, tokenizer, 1, workers=2)[0]
  resumed = _hosts(shapes_cfg, tokenizer, 1, workers=2)[0]
  resumed.set_state(host_slices.resliced_state(tmp_path, resumed.get_state()))
  read_by_one = [next(one)["index"] for _ in range(3)]
  assert json.loads(resumed.get_state()) == json.loads(one.get_state())
  assert (sorted(np.concatenate([b["index"] for b in read]))
          == sorted(np.concatenate(read_by_one)))
  np.testing.assert_array_equal(next(resumed)["index"], next(one)["index"])
  for it in before + [one, resumed]:
    pipeline.close_iterator(it)


def test_a_position_of_grain_workers_that_another_host_count_reads_otherwise(shapes_cfg,
                                                                             tokenizer, tmp_path):
  """3 workers, 1 host x 8 rows -> 2 hosts x 4: after 3 batches (one block of 3 global batches)
  the records read are the same; after 4, worker 0's batch of the second block holds other
  records on 2 hosts (positions 24, 27, ..., 45 against 24, 27, 28, 31, ...), so it is refused."""
  saved = _hosts(shapes_cfg, tokenizer, 1, workers=3)
  now = [it.get_state() for it in _hosts(shapes_cfg, tokenizer, 2, workers=3)]
  _global_batches(saved, 3)
  _save(saved, tmp_path)
  assert host_slices.batches_read(json.loads(host_slices.resliced_state(tmp_path, now[1]))) == 3
  _global_batches(saved, 1)
  _save(saved, tmp_path)
  with pytest.raises(host_slices.ProcessCountMismatchError,
                     match=r"saved by 1 process\(es\); with data\.num_workers=3 .* the records of "
                     r"the 4 batches read there are not those of 4 batches on 2 process\(es\): 4 "
                     r"is not a multiple of 3, nor are both per-host batch sizes \(8 and 4\) "
                     r"multiples of 3$") as error:
    host_slices.resliced_state(tmp_path, now[0])
  assert error.value.saved == 1
  pipeline.close_iterator(saved[0])
  # This run without workers: a changed config, which grain names when it refuses the state.
  plain = _hosts(shapes_cfg, tokenizer, 2)[0].get_state()
  assert json.loads(host_slices.resliced_state(tmp_path, plain))["worker_count"] == 3


def test_states_of_another_sampler_are_left_for_grain_to_refuse(shapes_cfg, tokenizer, tmp_path):
  """States of another version's sampler (before HostSliceSampler, hosts read interleaved
  shards): not damage but other code, which grain refuses as another sampler, as it does when
  the host count is unchanged."""
  _save(_hosts(shapes_cfg, tokenizer, 2), tmp_path)
  for h in range(2):
    path = tmp_path / f"process_{h}-of-2.json"
    inner = re.fullmatch(r"HostSliceSampler\((.*), batch_size_per_host=4, process=\d/2\)",
                         json.loads(path.read_text())["sampler"])[1]
    _edit(path, sampler=inner.replace("NoSharding()", f"ShardOptions(shard_index={h}, "
                                      "shard_count=2, drop_remainder=True)"))
  one = _hosts(shapes_cfg, tokenizer, 1)[0]
  state = host_slices.resliced_state(tmp_path, one.get_state())
  with pytest.raises(ValueError, match="Sampler in checkpoint does not match"):
    one.set_state(state)


def test_a_fixed_number_of_epochs_warns_of_the_records_left_out(shapes_cfg, tokenizer, caplog):
  """num_epochs with a split that is not a whole number of global batches dropped its last
  records without a word (256 train records in batches of 24: 16 never read)."""
  warning = ("ExampleSource(captioned_shapes, split='train', 256 records) read for 1 epoch(s) in "
             "global batches of 24 leaves out the last 16 records of its order (whole batches "
             "only).")
  caplog.set_level(logging.WARNING, logger="llmimg_jax.data.pipeline")
  left_out = lambda: [r.getMessage() for r in caplog.records if "leaves out" in r.getMessage()]
  for host in (0, 1):  # two hosts of 12 rows: global batches of 24, the warning on host 0 only
    batches = list(pipeline.make_iterator(shapes_cfg, tokenizer, batch_size_per_host=12, seed=0,
                                          num_epochs=1, process_index=host, process_count=2))
    assert len(batches) == 10 and len({int(i) for b in batches for i in b["index"]}) == 120
    assert left_out() == [warning] * (host == 0)
    caplog.clear()
  assert len(list(pipeline.make_iterator(shapes_cfg, tokenizer, batch_size_per_host=8, seed=0,
                                         num_epochs=1, process_index=0, process_count=2))) == 16
  assert not left_out()
