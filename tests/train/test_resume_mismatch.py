"""Resuming checkpoints of another config, code version, input pipeline, dataset or number of
hosts, in process on the tiny config: the change is named and the checkpoints stay (even with
start_fresh_if_corrupt); what still fits (grad_clip turned on, 2 hosts' positions on one)
resumes."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from llmimg_jax.data import host_slices
from llmimg_jax.data.pipeline import close_iterator, make_iterator, sampler_seed
from llmimg_jax.train import checkpoint, hosts
from llmimg_jax.train.state import _adam, build_models, build_text
from tests.sample.utils import _quick_state
from tests.train.utils import _equal, _fresh


def _abstract_state(config):
  """What train() restores into for `config` (host-drawn values, nothing compiled)."""
  _, t5_config, pretrained = build_text(config)
  return checkpoint.abstract_like(_quick_state(build_models(config, t5_config), pretrained))


def test_checkpoints_resume_after_turning_on_grad_clip(saved, tmp_path):
  """The divergence error advises config.train.grad_clip: the optimizer state keeps its shape."""
  config, tokenizer, states, _ = saved
  config.train.grad_clip = 1.0
  manager, it = _fresh(config, tokenizer, tmp_path)
  restored = checkpoint.restore_latest(manager, _abstract_state(config), it, config=config)
  assert _equal(restored, states[4])
  # Adam's own layout, with and without clipping: checkpoints of earlier runs restore too.
  params = {"w": np.ones(3, np.float32)}
  assert (jax.tree.structure(_adam(1e-4, config).init(params))
          == jax.tree.structure(optax.adam(1e-4).init(params)))


def test_a_changed_config_is_named_and_the_checkpoints_stay(saved, tmp_path):
  config, tokenizer, states, _ = saved
  config.model.nf_g = 16
  manager, it = _fresh(config, tokenizer, tmp_path)
  with pytest.raises(checkpoint.ConfigMismatchError,
                     match=r"do not fit the model or the input pipeline this run builds \(values "
                           r"that differ from the "
                           r"config saved with step 4: model\.nf_g: 8 -> 16\. .*\)\. Rerun with "
                           r"the config \(and version\) the run started with"):
    checkpoint.restore_latest(manager, _abstract_state(config), it,
                              start_fresh_if_corrupt=True, config=config)
  config.model.nf_g = 8  # the same config, a state laid out differently (other code)
  nested = states[4].replace(g_opt_state=(optax.EmptyState(), states[4].g_opt_state))
  with pytest.raises(checkpoint.ConfigMismatchError,
                     match=r"this run's config equals the saved one, so the code that builds "
                           r"the model or the input pipeline changed \(another version of "
                           r"llmimg_jax\)"):
    checkpoint.restore_latest(manager, checkpoint.abstract_like(nested), it,
                              start_fresh_if_corrupt=True, config=config)
  with pytest.raises(checkpoint.ConfigMismatchError,  # no config to compare with
                     match="the config or the code that builds the model changed since"):
    checkpoint.restore_latest(manager, checkpoint.abstract_like(nested), it,
                              start_fresh_if_corrupt=True)
  assert sorted(manager.all_steps()) == [2, 4]  # not moved aside, although asked to start fresh
  assert not (tmp_path / checkpoint.CORRUPT_DIR).exists()


def _assert_refused_and_kept(manager, config, it, match: str, steps=(2, 4)
                             ) -> checkpoint.ConfigMismatchError:
  """restore_latest refuses the checkpoints as not fitting this run, naming `match`, and leaves
  them (`steps`) in place although asked to start fresh; the error, for more checks."""
  with pytest.raises(checkpoint.ConfigMismatchError, match=match) as error:
    checkpoint.restore_latest(manager, _abstract_state(config), it, start_fresh_if_corrupt=True,
                              config=config)
  assert sorted(manager.all_steps()) == list(steps)
  assert not (Path(manager.directory).parent / checkpoint.CORRUPT_DIR).exists()
  return error.value


def _as_saved_by_two_hosts_with_workers(checkpoints) -> None:
  """Every step's input-iterator state (one process, batch 8) rewritten as 2 hosts' (4 rows
  each) with 3 grain workers each, at the same number of batches (2 or 4: worker w read batches
  w, w + 3, ...). One host's 3 workers with 8 rows each read other records by then (see
  tests/data/test_host_slices.py)."""
  for state_file in checkpoints.glob("*/data/process_0-of-1.json"):
    state = json.loads(state_file.read_text())
    batches = (state["last_seen_indices"]["0"] + 1) // 8
    done = [len(range(w, batches, 3)) for w in range(3)]
    position = {"last_seen_indices": {str(w): w + 3 * (n * 4 - 1) for w, n in enumerate(done)},
                "last_worker_index": (batches - 1) % 3, "worker_count": 3}
    for h in range(2):
      sampler = state["sampler"].replace("=8, process=0/1", f"=4, process={h}/2")
      state_file.with_name(f"process_{h}-of-2.json").write_text(
          json.dumps({**state, "sampler": sampler, **position}))
    state_file.unlink()


@pytest.mark.parametrize("change", ["num_workers", "batch_size", "process_count"])
def test_changed_input_pipeline_is_named_and_the_checkpoints_stay(saved, tmp_path, change):
  """grain refuses an iterator state saved with other workers or another batch size per host;
  positions of grain worker processes saved by another number of hosts cannot be resliced. A
  changed run, not damage, so the checkpoints stay even with start_fresh_if_corrupt."""
  config, tokenizer, _, _ = saved
  batch_size, workdir = 8, tmp_path
  if change == "num_workers":
    config.data.num_workers = 1
    match = r"config saved with step 4: data\.num_workers: 0 -> 1\. If none of them"
  elif change == "batch_size":
    config.train.batch_size = batch_size = 16
    match = r"config saved with step 4: train\.batch_size: 8 -> 16\. If none of them"
  else:  # as if saved by 2 hosts with workers, in a workdir whose path makes the message long
    workdir = tmp_path / ("w" * 200) / ("w" * 200)
    shutil.copytree(tmp_path / "checkpoints", workdir / "checkpoints")
    _as_saved_by_two_hosts_with_workers(workdir / "checkpoints")
    config.data.num_workers = 3  # as the states say
    match = (r"were saved by a run of 2 process\(es\) and this run has 1; with "
             r"data\.num_workers=3 \(each worker batching its own records\) the records of the "
             r"4 batches read there are not those of 4 batches on 1 process\(es\): 4 is not a "
             r"multiple of 3, nor are both per-host batch sizes \(4 and 8\) multiples of 3, so "
             r"the input-pipeline position \(STEP/data/\) "
             r"cannot be carried over\. Resume with --num_processes=2 \(the devices per process "
             r"may differ\), or pass a new --workdir for a new run\. The checkpoints were left in "
             r"place\.$")  # not told to rerun with the old config, step 2 (refused alike) not named
  manager = checkpoint.make_manager(workdir, config)
  it = make_iterator(config.data, tokenizer, batch_size_per_host=batch_size, seed=0)
  _assert_refused_and_kept(manager, config, it, match)
  assert not (workdir / checkpoint.CORRUPT_DIR).exists()


def test_a_run_saved_by_two_hosts_resumes_on_one(saved, tmp_path, caplog):
  """Without grain workers a position is a count of global batches: the state saved by 2 hosts
  (each half of every global batch) puts one process where they were."""
  config, tokenizer, states, data = saved
  hosts = [make_iterator(config.data, tokenizer, batch_size_per_host=4, seed=0, process_index=h,
                         process_count=2) for h in range(2)]
  for step in (2, 4):
    for it in hosts:
      next(it), next(it)
    data_dir = tmp_path / "checkpoints" / str(step) / "data"
    (data_dir / "process_0-of-1.json").unlink()
    for h, it in enumerate(hosts):
      (data_dir / f"process_{h}-of-2.json").write_text(it.get_state().decode())
  manager, it = _fresh(config, tokenizer, tmp_path)
  with caplog.at_level(logging.INFO):
    restored = checkpoint.restore_latest(manager, checkpoint.abstract_like(states[4]), it,
                                         config=config)
  assert _equal(jax.device_get(restored), jax.device_get(states[4]))
  assert json.loads(it.get_state()) == json.loads(data[4])  # where one process would be
  assert "Resumed the input position saved by 2 process(es) on this run's 1." in caplog.text
  assert manager.all_steps() == [2, 4]


def test_a_changed_dataset_is_named_not_taken_for_other_code(saved, tmp_path):
  """The same config over a dataset with other records (e.g. a captioned_folder rebuilt after
  adding images): grain refuses the iterator state, and the error says the data changed."""
  from llmimg_jax.data.pipeline import ExampleSource, load_source
  config, tokenizer, _, _ = saved
  full = load_source(config.data)

  class First:  # the build's first records only, as if it had fewer images
    def __len__(self):
      return len(full) - 8
    def __getitem__(self, i):
      return full._source[i]

  source = ExampleSource(First(), full.name, full.split, full.all_splits)
  manager = checkpoint.make_manager(tmp_path, config)
  it = make_iterator(config.data, tokenizer, batch_size_per_host=8, seed=0, source=source)
  _assert_refused_and_kept(
      manager, config, it, rf"this run's config equals the saved one, but its data differs: the "
      rf"checkpoints' input pipeline read {len(full)} records, this one {len(full) - 8}\. The "
      "dataset changed since they were saved")


def _recorded(impl: str, length: int) -> str:
  return (rf"jax_default_prng_impl threefry2x32 \(a training key of uint32 \[2\]\); this "
          rf"process's is {impl} \(uint32 \[{length}\]\)")


def _by_length(impl: str) -> str:
  return (rf"their training key is uint32 \[2\], made under jax_default_prng_impl threefry2x32 "
          rf"or philox4x32; this process's is {impl} \(uint32 \[4\]\)")


@pytest.mark.parametrize("recorded, impl, lr_g, named", [
    (True, "philox4x32", None, _recorded("philox4x32", 2)),
    (True, "rbg", None, _recorded("rbg", 4)),
    (True, "unsafe_rbg", 3e-4, _recorded("unsafe_rbg", 4)),
    # Checkpoints of earlier versions (no STEP/prng record): told apart by key length only.
    (False, "rbg", None, _by_length("rbg")),
    (False, "unsafe_rbg", 3e-4, _by_length("unsafe_rbg"))])
def test_a_run_saved_under_another_jax_prng_is_refused_by_name(saved, tmp_path, monkeypatch,
                                                               recorded, impl, lr_g, named):
  """Each checkpoint records its training key's PRNG. Saved under threefry2x32 (JAX's default),
  resumed under JAX_DEFAULT_PRNG_IMPL=philox4x32, whose raw keys are uint32 [2] too: the state
  restored and the run went on drawing another random stream, without a word (not the results
  of an uninterrupted run). Under rbg (keys of uint32 [4]) the error blamed another version of
  llmimg_jax or edited files, and rerunning as it advised never worked. Nothing is restored; a
  changed config value is named too."""
  config, tokenizer, _, _ = saved
  if not recorded:
    for record in (tmp_path / "checkpoints").glob("*/prng"):
      shutil.rmtree(record)
  manager, it = _fresh(config, tokenizer, tmp_path)
  also = ""
  if lr_g is not None:
    also = rf" The config differs too: train\.lr_g: {config.train.lr_g} -> {lr_g}\."
    config.train.lr_g = lr_g
  tried, restore = [], checkpoint.restore
  monkeypatch.setattr(checkpoint, "restore", lambda m, step, *a: tried.append(step) or restore(
      m, step, *a))
  with jax.default_prng_impl(impl):
    _assert_refused_and_kept(
        manager, config, it, rf"were saved under another JAX PRNG: {named}\. Rerun under the one "
        rf"the run started with .* for a new run\.{also} The checkpoints were left in place")
  assert tried == ([] if recorded else [4])  # the record is read before any restore


def test_hosts_agree_that_another_prng_is_not_resumed(saved, tmp_path, monkeypatch):
  """Host 1 runs under another PRNG than the one the checkpoints record: every host stops before
  restoring anything."""
  config, tokenizer, _, _ = saved
  host_1 = iter([True])  # the PRNG differs there
  monkeypatch.setattr(hosts, "host_flags", lambda flag: [bool(flag), next(host_1, False)])
  manager, it = _fresh(config, tokenizer, tmp_path)
  _assert_refused_and_kept(manager, config, it, r"saved under another JAX PRNG: another host's "
                           r"jax_default_prng_impl is not the one they record\. Rerun under")


def test_edited_iterator_states_are_not_blamed_on_the_config(saved, tmp_path):
  """Every step's input-iterator state edited by hand (another shuffle seed): grain refuses it as
  it would a changed pipeline, and with the config unchanged the error names the edit too."""
  config, tokenizer, _, _ = saved
  for state_file in (tmp_path / "checkpoints").glob("*/data/process_0-of-1.json"):
    text = state_file.read_text()
    assert f"seed={sampler_seed(0)})" in text
    state_file.write_text(text.replace(f"seed={sampler_seed(0)})", f"seed={sampler_seed(5)})"))
  manager, it = _fresh(config, tokenizer, tmp_path)
  _assert_refused_and_kept(
      manager, config, it, r"this run's config equals the saved one, so the code that builds the "
      r"model or the input pipeline changed .*, or the files saved with them .* were edited\)")


def test_a_damaged_latest_beside_an_older_one_of_another_host_count_moves_nothing(saved,
                                                                                 tmp_path):
  """Step 4 damaged, step 2 intact but saved by 2 hosts with grain workers: the run does not fit
  its checkpoints, so even start_fresh_if_corrupt moves none of them (step 2 would be lost to a
  run started with the wrong --num_processes). The message names step 4's damage too: with the
  advised --num_processes the run will resume from step 2."""
  config, tokenizer, _, _ = saved
  _as_saved_by_two_hosts_with_workers(tmp_path / "checkpoints")
  (tmp_path / "checkpoints" / "4" / "data" / "process_1-of-2.json").unlink()  # damage
  config.data.num_workers = 3  # as the states say
  manager, it = _fresh(config, tokenizer, tmp_path)
  error = _assert_refused_and_kept(
      manager, config, it, r"saved by a run of 2 process\(es\) and this run has 1.*The "
      r"checkpoints were left in place\. Step 4 failed for another reason as well: "
      r"FileNotFoundError: .*process_1-of-2\.json is missing")
  assert "step 2" not in str(error)  # its reason is the message itself


def test_a_newer_position_of_workers_that_this_count_cannot_read_stops_the_run(saved, tmp_path):
  """2 hosts with 3 grain workers saved steps 3, 4 and 5; on 1 host step 3's records read are the
  same (3 batches: one block of 3), step 4's and 5's are not. The run stops at step 5 instead of
  falling back past it, which would redo steps and move steps 5 and 4 aside as damage, and names
  step 3; with steps 5 and 4 moved aside by hand, step 3 resumes on 1 host."""
  config, tokenizer, states, _ = saved
  workdir = tmp_path / "workers"
  manager, it = _fresh(config, tokenizer, workdir)
  for step, batches in ((3, 3), (4, 1), (5, 1)):
    for _ in range(batches):
      next(it)
    checkpoint.save(manager, step, states[4].replace(step=np.int32(step)), it, config)
  manager.wait_until_finished()
  _as_saved_by_two_hosts_with_workers(workdir / "checkpoints")
  config.data.num_workers = 3  # as the states say
  manager, it = _fresh(config, tokenizer, workdir)
  _assert_refused_and_kept(
      manager, config, it, r"the 5 batches read there .* Resume with --num_processes=2 .* Step "
      r"3's input position can be carried over to this count: to resume from it instead "
      r"\(redoing the steps after it\), move the directories of steps 5, 4 aside\.$",
      steps=(3, 4, 5))
  for step in (4, 5):
    shutil.move(workdir / "checkpoints" / str(step), tmp_path / f"step_{step}")
  restored = checkpoint.restore_latest(checkpoint.make_manager(workdir, config),
                                       _abstract_state(config), it, config=config)
  assert int(restored.step) == 3
  position = json.loads(it.get_state())
  assert host_slices.batches_read(position) == 3 and position["worker_count"] == 3
  assert "process=0/1" in position["sampler"]
  close_iterator(it)


def test_hosts_agree_that_checkpoints_do_not_fit(saved, tmp_path, monkeypatch):
  """Host 0 restores both steps, host 1 (e.g. another version of llmimg_jax installed there)
  refuses them as not fitting: every host stops with ConfigMismatchError and nothing is moved,
  instead of host 0 moving them aside as damage (start_fresh_if_corrupt) and waiting for host 1
  at its next barrier."""
  config, tokenizer, states, _ = saved
  # per step: the recorded PRNG, readable, not restored, not another process count's position;
  # then a mismatch
  host_1 = iter([False, True, False, False, False, True, False, False])
  monkeypatch.setattr(hosts, "host_flags", lambda flag: [bool(flag), next(host_1, True)])
  manager, it = _fresh(config, tokenizer, tmp_path)
  with pytest.raises(checkpoint.ConfigMismatchError, match=r"step 4: failed on another host"):
    checkpoint.restore_latest(manager, checkpoint.abstract_like(states[4]), it,
                              start_fresh_if_corrupt=True, config=config)
  assert sorted(manager.all_steps()) == [2, 4]
  assert not (tmp_path / checkpoint.CORRUPT_DIR).exists()


def test_hosts_that_saw_other_errors_pass_the_same_barriers_making_theirs(saved, tmp_path,
                                                                        monkeypatch):
  """Hosts agree that the checkpoints do not fit, each from its own error (a read that failed on
  one host, a position of another host count on the other): the host that saw no host-count error
  read the saved config, whose Orbax restore waits at a barrier for every host, and the other
  did not, leaving it there until the barrier timed out instead of both raising."""
  from orbax.checkpoint._src.multihost import multihost
  config, tokenizer, _, _ = saved
  manager, it = _fresh(config, tokenizer, tmp_path)
  barriers, sync = [], multihost.sync_global_processes
  monkeypatch.setattr(multihost, "sync_global_processes",
                      lambda *args, **kwargs: barriers.append(args[0]) or sync(*args, **kwargs))
  passed = []
  for error in (ValueError("Error reading 'd/0.0': DATA_LOSS"),  # beside another host's mismatch
                host_slices.ProcessCountMismatchError("saved by 2", 2, "its workers' records")):
    barriers.clear()
    assert isinstance(checkpoint._mismatch_error(manager, [4, 2], {4: error}, it, config, "..."),
                      checkpoint.ConfigMismatchError)
    passed.append(list(barriers))
  assert passed[0] == passed[1] and passed[0], passed
  close_iterator(it)


def test_a_newest_checkpoint_that_does_not_fit_stops_the_run_before_older_ones(
    saved, tmp_path, monkeypatch):
  """Step 4 saved by a run of another config (or version), step 2 by this one: the run stops at
  step 4, naming the change, instead of falling back to step 2 (redoing its steps and moving
  step 4 aside as damage); and the older steps are not restored one by one before that."""
  config, tokenizer, _, _ = saved
  shutil.rmtree(tmp_path / "checkpoints" / "4")
  other = config.copy_and_resolve_references()
  other.model.nf_g = 16
  manager, it = _fresh(other, tokenizer, tmp_path)
  for _ in range(4):
    next(it)
  state = _quick_state(build_models(other, build_text(other)[1]), None)
  checkpoint.save(manager, 4, state.replace(step=np.int32(4)), it, other)
  manager.wait_until_finished()
  tried, restore = [], checkpoint.restore
  monkeypatch.setattr(checkpoint, "restore", lambda m, step, *a: (tried.append(step),
                                                                   restore(m, step, *a))[1])
  manager, it = _fresh(config, tokenizer, tmp_path)
  with pytest.raises(checkpoint.ConfigMismatchError,
                     match=r"config saved with step 4: model\.nf_g: 16 -> 8\..* left in place"):
    checkpoint.restore_latest(manager, _abstract_state(config), it, config=config)
  assert tried == [4]
  assert sorted(manager.all_steps()) == [2, 4]
  assert not (tmp_path / checkpoint.CORRUPT_DIR).exists()
