"""Non-finite updates, divergence, and damaged checkpoints, in process on the tiny config."""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llmimg_jax import gan
from llmimg_jax.data.pipeline import make_iterator
from llmimg_jax.train import checkpoint, loop
from llmimg_jax.train.state import _adam, build_models, build_text
from llmimg_jax.train.step import train_step
from tests.sample.conftest import _quick_state
from tests.train.conftest import tiny_config
from tests.train.test_step import _batch
from tests.train.test_step_reference import _host_state


def _equal(a, b) -> bool:
  return all(jax.tree.leaves(jax.tree.map(
      lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)))


def _scalar_events(logdir: Path, tag: str) -> list[tuple[int, float]]:
  """(step, value) of a scalar as TensorBoard shows it: event files in order (TFRecord framing:
  length, its CRC, an Event proto, its CRC), where a SessionLog.START at step S drops the events
  of step >= S read before it (a run resumed at S - 1)."""
  from tensorboardX.proto import event_pb2
  events = []
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    data, i = path.read_bytes(), 0
    while i < len(data):
      (size,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + size])
      if event.session_log.status == event_pb2.SessionLog.START:
        events = [(step, value) for step, value in events if step < event.step]
      events += [(event.step, value.simple_value) for value in event.summary.value
                 if value.tag == tag]
      i += 12 + size + 4
  return events


def _scalars(logdir: Path, tag: str) -> dict[int, float]:
  return dict(_scalar_events(logdir, tag))


def _poison(batch: dict) -> dict:
  """Token ids past the vocabulary (a broken tokenizer or record): NaN text embeddings."""
  return {**batch, "input_ids": np.full_like(batch["input_ids"], 10**6)}


def test_non_finite_update_is_skipped_and_counted(tmp_path):
  config = tiny_config(tmp_path)
  mesh = loop.make_mesh()
  tokenizer, t5_config, _ = build_text(config)
  models = build_models(config, t5_config)
  step_fn = loop.jit_train_step(models, mesh)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  good = _batch(config, tokenizer)
  state = loop.create_state(models, mesh, config.seed)
  before = jax.device_get(state)
  assert _equal(before.ema_params, before.g_params)  # the EMA starts as a copy of G

  state, metrics = step_fn(state, jax.device_put(_poison(good), sharding))
  assert metrics["finite"] == 0.0 and not np.isfinite(float(metrics["d_loss"]))
  after = jax.device_get(state)
  assert int(after.step) == 1 and int(after.bad_steps) == 1
  assert _equal(after.replace(step=before.step, bad_steps=before.bad_steps), before)

  state, metrics = step_fn(state, jax.device_put(_poison(good), sharding))
  assert int(state.bad_steps) == 2
  state, metrics = step_fn(state, jax.device_put(good, sharding))
  assert metrics["finite"] == 1.0 and int(state.step) == 3 and int(state.bad_steps) == 0
  assert not _equal(jax.device_get(state.g_params), before.g_params)


@jax.custom_vjp
def _nan_gradient(x):
  return x


_nan_gradient.defvjp(lambda x: (x, None), lambda _, g: (jnp.full_like(g, jnp.nan),))


@pytest.mark.parametrize("poisoned", ["g", "text"])
def test_a_nan_gradient_under_finite_losses_is_skipped(tmp_path, monkeypatch, poisoned):
  """A NaN in one gradient while both losses stay finite: G's (the backward pass of the
  DiffAugment its fakes go through) or the text encoder's (that of the sentence pooling)."""
  config = tiny_config(tmp_path)
  # A smaller program (compiles in half the time); DiffAugment "" still calls gan.diff_augment.
  config.loss.contrastive_weight, config.loss.diffaugment = 0.0, ""
  config.model.attn_resolutions = ()
  if poisoned == "g":
    augment = gan.diff_augment
    monkeypatch.setattr(gan, "diff_augment",
                        lambda x, key, policy: augment(_nan_gradient(x), key, policy))
  else:
    pool = gan.sentence_embedding
    monkeypatch.setattr(gan, "sentence_embedding",
                        lambda words, mask: pool(_nan_gradient(words), mask))
  tokenizer, t5_config, _ = build_text(config)
  models = build_models(config, t5_config)
  state = _host_state(models)
  new_state, metrics = jax.device_get(
      jax.jit(functools.partial(train_step, models))(state, _batch(config, tokenizer)))
  assert np.isfinite(metrics["d_loss"]) and np.isfinite(metrics["g_loss"])
  finite_norms = {k: bool(np.isfinite(metrics[f"grad_norm_{k}"])) for k in ("g", "d", "text")}
  assert finite_norms == {"g": poisoned != "g", "d": True, "text": poisoned != "text"}
  assert metrics["finite"] == 0.0
  assert int(new_state.step) == int(state.step) + 1 and int(new_state.bad_steps) == 1
  assert _equal(new_state.replace(step=state.step, bad_steps=state.bad_steps), state)


class _Poisoned:
  """The real iterator (checkpointable), with batches first..last (1-based) poisoned."""

  def __init__(self, it, first: int, last: int):
    self.it, self.first, self.last, self.n = it, first, last, 0

  def __next__(self):
    self.n += 1
    batch = next(self.it)
    return _poison(batch) if self.first <= self.n <= self.last else batch

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(state)


def test_divergence_stops_with_a_clear_error_and_the_last_good_checkpoint(
    shapes_data_dir, tmp_path, monkeypatch, caplog):
  config = tiny_config(shapes_data_dir)
  config.train.steps, config.train.log_every, config.train.max_bad_steps = 10, 2, 3
  # Steps 3-5 fail; step 6 (a log step) is finite again: the streak ended between two logs.
  monkeypatch.setattr(loop, "make_iterator",
                      lambda *a, **k: _Poisoned(make_iterator(*a, **k), first=3, last=5))
  with caplog.at_level(logging.WARNING), pytest.raises(loop.DivergenceError) as error:
    loop.train(config, tmp_path)
  assert "3 consecutive non-finite updates by step 6" in str(error.value)
  assert "last good checkpoint" in str(error.value) and "grad_clip" in str(error.value)
  assert "Step 4: 2 update(s) skipped for non-finite losses or gradients" in caplog.text
  # The TensorBoard log was closed (flushed) on the way out: it holds every logged step.
  logdir = tmp_path / "tensorboard"
  assert _scalars(logdir, "train/skipped_updates") == {2: 0.0, 4: 2.0, 6: 1.0}
  # Losses average the updates made: step 6's window (5 skipped, 6 made) logs step 6's.
  d_loss = _scalars(logdir, "train/d_loss")
  assert np.isfinite(d_loss[2]) and np.isnan(d_loss[4]) and np.isfinite(d_loss[6])
  assert _scalars(logdir, "train/finite") == {2: 1.0, 4: 0.0, 6: 0.5}
  manager = checkpoint.make_manager(tmp_path, config)
  assert manager.all_steps() == [2, 4]
  abstract = checkpoint.abstract_like(loop.create_state(
      build_models(config, build_text(config)[1]), loop.make_mesh(), config.seed))
  good, during = (jax.device_get(checkpoint.restore(manager, s, abstract)) for s in (2, 4))
  assert int(good.bad_steps) == 0 and int(during.bad_steps) == 2
  # Steps 3 and 4 changed nothing: the step-4 checkpoint holds the step-2 (finite) parameters.
  assert _equal(during.replace(step=good.step, bad_steps=good.bad_steps), good)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(good.g_params))


@pytest.fixture
def saved(shapes_data_dir, tmp_path):
  """Checkpoints at steps 2 and 4 of host-drawn states (nothing compiled) with the iterator."""
  config = tiny_config(shapes_data_dir)
  tokenizer, t5_config, pretrained = build_text(config)
  state = _quick_state(build_models(config, t5_config), pretrained)
  it = make_iterator(config.data, tokenizer, batch_size_per_host=8, seed=0)
  manager = checkpoint.make_manager(tmp_path, config)
  states, data = {}, {0: it.get_state()}
  for step in (2, 4):
    next(it)
    states[step] = state.replace(step=np.int32(step), g_params=jax.tree.map(
        lambda x, s=step: x + s, state.g_params))
    checkpoint.save(manager, step, states[step], it, config)
    data[step] = it.get_state()
  manager.wait_until_finished()
  return config, tokenizer, states, data


def _fresh(config, tokenizer, workdir):
  return (checkpoint.make_manager(workdir, config),
          make_iterator(config.data, tokenizer, batch_size_per_host=8, seed=0))


def _abstract_state(config):
  """What train() restores into for `config` (host-drawn values, nothing compiled)."""
  _, t5_config, pretrained = build_text(config)
  return checkpoint.abstract_like(_quick_state(build_models(config, t5_config), pretrained))


def _damage(step_dir, how: str) -> None:
  files = sorted(p for p in (step_dir / "state").rglob("*") if p.is_file())
  if how == "truncated":
    for p in files:
      p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
  elif how == "half_deleted":
    for p in files[::2]:
      p.unlink()
  elif how == "array_data_deleted":
    shutil.rmtree(step_dir / "state" / "d")
  elif how == "data_state_deleted":
    for p in (step_dir / "data").iterdir():
      p.unlink()


@pytest.mark.parametrize("how", ["truncated", "half_deleted", "array_data_deleted",
                                 "data_state_deleted"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(saved, tmp_path, how, caplog):
  config, tokenizer, states, data = saved
  _damage(tmp_path / "checkpoints" / "4", how)
  manager, it = _fresh(config, tokenizer, tmp_path)
  with caplog.at_level(logging.WARNING):
    restored = checkpoint.restore_latest(manager, checkpoint.abstract_like(states[2]), it)
  assert _equal(jax.device_get(restored), jax.device_get(states[2]))
  assert it.get_state() == data[2]  # the input pipeline resumes where step 2 left it
  assert f"{tmp_path / 'checkpoints' / '4'} could not be restored" in caplog.text
  assert "previous good checkpoint, step 2" in caplog.text
  assert manager.all_steps() == [2]
  assert (tmp_path / checkpoint.CORRUPT_DIR / "4" / "state").is_dir()  # kept, not deleted


def test_no_readable_checkpoint_stops_unless_asked_to_start_fresh(saved, tmp_path):
  config, tokenizer, states, data = saved
  for step in (2, 4):
    _damage(tmp_path / "checkpoints" / str(step), "truncated")
  manager, it = _fresh(config, tokenizer, tmp_path)
  abstract = checkpoint.abstract_like(states[2])
  with pytest.raises(checkpoint.CorruptCheckpointError,
                     match=r"No checkpoint in .* could be restored \(step 4: .*; step 2: .*"
                           r"--start_fresh_if_corrupt.*rerun with the config the run started "
                           r"with") as error:
    checkpoint.restore_latest(manager, abstract, it, config=config)  # as train() calls it
  assert not isinstance(error.value, checkpoint.ConfigMismatchError)  # same config: damage
  assert sorted(manager.all_steps()) == [2, 4]  # untouched
  assert checkpoint.restore_latest(manager, abstract, it, start_fresh_if_corrupt=True) is None
  assert manager.all_steps() == [] and it.get_state() == data[0]
  assert sorted(p.name for p in (tmp_path / checkpoint.CORRUPT_DIR).iterdir()) == ["2", "4"]


def test_access_and_resource_errors_are_told_from_damage():
  unavailable = RuntimeError("restore failed")
  unavailable.__cause__ = ValueError("UNAVAILABLE: Connection reset by peer")  # a network mount
  for error in (PermissionError(13, "Permission denied"), MemoryError(), TimeoutError(),
                ValueError('PERMISSION_DENIED: Error reading "d/0.0" in OCDBT database'),
                ValueError("RESOURCE_EXHAUSTED: out of memory"), unavailable):
    assert checkpoint._is_access_error(error), error
  for error in (ValueError('NOT_FOUND: Error reading "d/0.0" in OCDBT database'),  # deleted
                ValueError("DATA_LOSS: Unexpected end of file"), FileNotFoundError(2, "gone"),
                ValueError("Expecting property name enclosed in double quotes"), None):
    assert not checkpoint._is_access_error(error), error


@pytest.mark.parametrize("error", [
    PermissionError(13, "Permission denied"),
    ValueError('PERMISSION_DENIED: Error reading "g_params.conv/0.0" in OCDBT database')])
def test_a_checkpoint_that_cannot_be_read_now_stops_the_run_and_stays(saved, tmp_path,
                                                                       monkeypatch, error):
  """Access or resources, not damage: no fallback to an older step (its training would be done
  again), nothing moved aside, not even with start_fresh_if_corrupt."""
  config, tokenizer, states, _ = saved
  restore = checkpoint.restore
  def unreadable_4(manager, step, *args):
    if step == 4:
      raise error
    return restore(manager, step, *args)
  monkeypatch.setattr(checkpoint, "restore", unreadable_4)
  manager, it = _fresh(config, tokenizer, tmp_path)
  with pytest.raises(checkpoint.CheckpointAccessError,
                     match=rf"{tmp_path / 'checkpoints' / '4'} could not be read "
                           rf"\({type(error).__name__}.*\), which is not damage"):
    checkpoint.restore_latest(manager, checkpoint.abstract_like(states[2]), it,
                              start_fresh_if_corrupt=True)
  assert sorted(manager.all_steps()) == [2, 4]
  assert not (tmp_path / checkpoint.CORRUPT_DIR).exists()


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


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_optimizers_clip_and_take_their_own_learning_rates(tmp_path, grad_clip):
  """G, D and the text encoder each get Adam with their learning rate, on gradients clipped to a
  global norm of grad_clip (0: unclipped). Two updates: Adam's first is lr * sign(g) whatever the
  gradient's scale, its second sees the first one's (clipped) size through nu."""
  config = tiny_config(tmp_path)
  config.train.lr_g, config.train.lr_d, config.train.lr_text = 1e-4, 3e-4, 2e-4
  config.train.grad_clip = grad_clip
  models = build_models(config, build_text(config)[1])
  rng = np.random.default_rng(0)
  params = {"w": rng.standard_normal((3, 4)).astype(np.float32),
            "b": rng.standard_normal(4).astype(np.float32)}
  big = jax.tree.map(lambda p: 10.0 * rng.standard_normal(p.shape).astype(np.float32), params)
  small = jax.tree.map(lambda g: 0.02 * g, big)
  norm = lambda g: np.sqrt(sum(np.sum(x.astype(np.float64)**2) for x in jax.tree.leaves(g)))
  assert norm(big) > 10 and norm(small) < 1

  def clipped(g):  # global-norm clipping, by hand
    scale = min(1.0, grad_clip / norm(g)) if grad_clip else 1.0
    return jax.tree.map(lambda x: np.float32(scale) * x, g)

  def two_updates(tx, grads):
    state, updates = tx.init(params), []
    for g in grads:
      u, state = tx.update(g, state, params)
      updates.append(u)
    return updates

  for tx, lr in ((models.g_tx, 1e-4), (models.d_tx, 3e-4), (models.text_tx, 2e-4)):
    want = two_updates(optax.adam(lr, b1=config.train.b1, b2=config.train.b2),
                       [clipped(big), clipped(small)])
    got = two_updates(tx, [big, small])
    for g, w in zip(got, want):
      for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(w)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-12)
  if grad_clip:  # the clip shows in the second update, by far more than the tolerance
    adam = optax.adam(1e-4, b1=config.train.b1, b2=config.train.b2)
    a = two_updates(adam, [clipped(big), clipped(small)])[1]["w"]
    b = two_updates(adam, [big, small])[1]["w"]
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 0.1 * np.abs(np.asarray(b)).max()


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
                     match=r"this run's config equals the saved one, so the code that builds the "
                           r"model or the input pipeline changed \(another version of llmimg_jax\)"):
    checkpoint.restore_latest(manager, checkpoint.abstract_like(nested), it,
                              start_fresh_if_corrupt=True, config=config)
  with pytest.raises(checkpoint.ConfigMismatchError,  # no config to compare with
                     match="the config or the code that builds the model changed since"):
    checkpoint.restore_latest(manager, checkpoint.abstract_like(nested), it,
                              start_fresh_if_corrupt=True)
  assert sorted(manager.all_steps()) == [2, 4]  # not moved aside, although asked to start fresh
  assert not (tmp_path / checkpoint.CORRUPT_DIR).exists()


def _assert_refused_and_kept(manager, config, it, match: str) -> None:
  """restore_latest refuses the checkpoints as not fitting this run, naming `match`, and leaves
  them in place although asked to start fresh."""
  with pytest.raises(checkpoint.ConfigMismatchError, match=match):
    checkpoint.restore_latest(manager, _abstract_state(config), it, start_fresh_if_corrupt=True,
                              config=config)
  assert sorted(manager.all_steps()) == [2, 4]


@pytest.mark.parametrize("change", ["num_workers", "batch_size", "process_count"])
def test_changed_input_pipeline_is_named_and_the_checkpoints_stay(saved, tmp_path, change):
  """grain refuses an iterator state saved with other workers or another batch size per host,
  and finds none for a process count it was not saved with: a changed run, not damage, so the
  checkpoints stay even with start_fresh_if_corrupt."""
  config, tokenizer, _, _ = saved
  batch_size, workdir = 8, tmp_path
  if change == "num_workers":
    config.data.num_workers = 1
    match = r"config saved with step 4: data\.num_workers: 0 -> 1\. If none of them"
  elif change == "batch_size":
    config.train.batch_size = batch_size = 16
    match = r"config saved with step 4: train\.batch_size: 8 -> 16\. If none of them"
  else:  # as if saved by 2 hosts, in a workdir whose path makes the message long
    workdir = tmp_path / ("w" * 200) / ("w" * 200)
    shutil.copytree(tmp_path / "checkpoints", workdir / "checkpoints")
    for state_file in (workdir / "checkpoints").glob("*/data/process_0-of-1.json"):
      state_file.rename(state_file.with_name("process_0-of-2.json"))
    match = r"was saved by 2 process\(es\) and this run has 1: resume with 2 process\(es\)\)"
  manager = checkpoint.make_manager(workdir, config)
  it = make_iterator(config.data, tokenizer, batch_size_per_host=batch_size, seed=0)
  _assert_refused_and_kept(manager, config, it, match)
  assert not (workdir / checkpoint.CORRUPT_DIR).exists()


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


def test_edited_iterator_states_are_not_blamed_on_the_config(saved, tmp_path):
  """Every step's input-iterator state edited by hand (another shuffle seed): grain refuses it as
  it would a changed pipeline, and with the config unchanged the error names the edit too."""
  config, tokenizer, _, _ = saved
  for state_file in (tmp_path / "checkpoints").glob("*/data/process_0-of-1.json"):
    state_file.write_text(state_file.read_text().replace("seed=0)", "seed=5)"))
  manager, it = _fresh(config, tokenizer, tmp_path)
  _assert_refused_and_kept(
      manager, config, it, r"this run's config equals the saved one, so the code that builds the "
      r"model or the input pipeline changed .*, or the files saved with them .* were edited\)")


def test_the_workdir_check_does_not_collide_with_another_hosts(tmp_path, monkeypatch):
  """Hosts of a shared workdir can run under the same pid (PID 1 as a container's entrypoint):
  one host's probe in flight must not make another's fail."""
  monkeypatch.setattr(os, "getpid", lambda: 1)
  (tmp_path / ".write_test.1").mkdir()  # where a pid-named probe would go
  loop.check_workdir_writable(tmp_path)
  assert [p.name for p in tmp_path.iterdir()] == [".write_test.1"]  # the probe is gone


def test_an_unreadable_config_json_is_replaced_not_fatal(tmp_path, caplog):
  config = tiny_config(tmp_path)
  (tmp_path / "config.json").write_text('{"data": {"name": "capt')  # cut short by a crash
  with caplog.at_level(logging.WARNING):
    loop._write_config(tmp_path, config)
  assert f"Could not read {tmp_path / 'config.json'}" in caplog.text
  assert json.loads((tmp_path / "config.json").read_text()) == json.loads(config.to_json())
  assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left


def test_interrupted_save_is_never_taken_for_a_checkpoint(saved, tmp_path):
  """Orbax writes a step into '<step>.orbax-checkpoint-tmp-*' and renames it when complete; a
  crash mid-save leaves only such a directory, which is ignored and cleaned up."""
  config, tokenizer, states, _ = saved
  ckpt_dir = tmp_path / "checkpoints"
  partial = ckpt_dir / "6.orbax-checkpoint-tmp-1764350000000000"
  shutil.copytree(ckpt_dir / "4", partial)
  _damage(partial, "half_deleted")
  manager, it = _fresh(config, tokenizer, tmp_path)
  assert sorted(manager.all_steps()) == [2, 4]
  restored = checkpoint.restore_latest(manager, checkpoint.abstract_like(states[4]), it)
  assert int(restored.step) == 4 and not partial.exists()


def test_sigint_asks_to_stop_a_second_one_interrupts_and_handlers_are_restored(tmp_path):
  import os
  import signal
  from llmimg_jax.train.preemption import PreemptionWatch
  before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  with PreemptionWatch(manager=None) as watch:
    assert not watch.synced and not watch.reached()
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: no KeyboardInterrupt, the loop saves and stops
    assert watch.reached() and watch.description == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again: stop now
  assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_with_jaxs_sync_manager_sigterm_stays_its_and_sigint_becomes_a_notice(monkeypatch):
  """Multi-host: SIGTERM is left to JAX's preemption notifier, Ctrl-C is forwarded to it as a
  SIGTERM, and the stop step is asked of the manager counted from this process's first step."""
  import signal
  from llmimg_jax.train import preemption
  monkeypatch.setattr(preemption, "_sync_manager_active", lambda: True)
  kills, asked = [], []
  monkeypatch.setattr(preemption.os, "kill", lambda pid, sig: kills.append((pid, sig)))

  class Manager:
    def reached_preemption(self, step):
      asked.append(step)
      return False
  sigterm_handler = signal.getsignal(signal.SIGTERM)
  with preemption.PreemptionWatch(Manager()) as watch:
    assert watch.synced and signal.getsignal(signal.SIGTERM) is sigterm_handler
    signal.raise_signal(signal.SIGINT)
    assert kills == [(os.getpid(), signal.SIGTERM)]
    assert not watch.reached() and not watch.reached() and asked == [1, 2]
    with pytest.raises(KeyboardInterrupt):
      signal.raise_signal(signal.SIGINT)
