"""Non-finite updates, divergence, gradient clipping, the workdir check and preemption signals, in
process on the tiny config."""
from __future__ import annotations

import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llmimg_jax import gan
from llmimg_jax.data.pipeline import make_iterator
from llmimg_jax.train import checkpoint, loop, resume
from llmimg_jax.train import workdir as workdir_checks
from llmimg_jax.train.state import build_models, build_text
from llmimg_jax.train.step import train_step
from tests.train.utils import _batch, _equal, _host_state, _scalars, tiny_config


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


def test_a_stop_at_the_last_step_still_ends_the_run_with_its_samples(shapes_data_dir, tmp_path,
                                                                     monkeypatch, caplog):
  """A SIGTERM/SIGINT during the last step: the run is complete once that step is saved. It was
  taken for a preemption: no final sample grid (nor evaluation), and a log telling to rerun to
  resume, where a rerun finds nothing to train and never makes them."""
  config = tiny_config(shapes_data_dir)
  config.train.update(steps=2, log_every=1, ckpt_every=100, sample_every=100)
  monkeypatch.setattr(loop.PreemptionWatch, "reached", lambda watch: True)  # a notice at once
  monkeypatch.setattr(loop.PreemptionWatch, "description", "SIGTERM")
  with caplog.at_level(logging.WARNING):
    state = loop.train(config, tmp_path)
  assert int(state.step) == 1  # stopped after the first step: saved, no grid
  assert not (tmp_path / "samples").exists() and "rerun the same command" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    state = loop.train(config, tmp_path)  # the rerun: a notice during its (last) step
  assert int(state.step) == 2
  assert (tmp_path / "samples" / "step_0000002.png").is_file()
  assert "rerun the same command" not in caplog.text, caplog.text
  assert checkpoint.make_manager(tmp_path, config).all_steps() == [1, 2]


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


def test_the_workdir_check_does_not_collide_with_another_hosts(tmp_path, monkeypatch):
  """Hosts of a shared workdir can run under the same pid (PID 1 as a container's entrypoint):
  one host's probe in flight must not make another's fail."""
  monkeypatch.setattr(os, "getpid", lambda: 1)
  (tmp_path / ".write_test.1").mkdir()  # where a pid-named probe would go
  loop.check_workdir_writable(tmp_path)
  assert [p.name for p in tmp_path.iterdir()] == [".write_test.1"]  # the probe is gone


@pytest.mark.parametrize("link, workdir", [("run", "run"), ("runs", "runs/new_run"),
                                           ("run/checkpoints", "run")])
def test_a_workdir_through_a_link_to_nothing_is_refused_before_training(tmp_path, link, workdir):
  """A runs folder linked to a disk that is not mounted: the check walked past the link (exists()
  follows it) to its writable parent, and the run failed after building everything, in Orbax's
  makedirs with a FileNotFoundError traceback."""
  if link == "run/checkpoints":  # an existing run whose checkpoints folder is a link
    (tmp_path / "run").mkdir()
  (tmp_path / link).symlink_to(tmp_path / "unmounted" / "runs")
  with pytest.raises(workdir_checks.WorkdirNotWritableError,
                     match=f"{tmp_path / link} is a link to .*unmounted/runs \\(No such file or "
                           r"directory\)\). Fix the folder's permissions \(or free space, or the "
                           r"mount\)"):
    loop.check_workdir_writable(tmp_path / workdir)


@pytest.mark.parametrize("text", ['{"data": {"name": "capt', "[]"])  # cut short by a crash
def test_an_unreadable_config_json_is_replaced_not_fatal(tmp_path, caplog, text):
  config = tiny_config(tmp_path)
  (tmp_path / "config.json").write_text(text)
  with caplog.at_level(logging.WARNING):
    resume.write_config(tmp_path, config)
  assert f"Could not read {tmp_path / 'config.json'}" in caplog.text
  assert "differs" not in caplog.text  # not every value listed as changed from nothing
  assert json.loads((tmp_path / "config.json").read_text()) == json.loads(config.to_json())
  assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left


def test_a_changed_config_json_warning_names_the_changed_values(tmp_path, caplog):
  # It said only that config.json differed: a value changed by mistake on resume went unseen.
  config = tiny_config(tmp_path)
  resume.write_config(tmp_path, config)
  config.unlock()
  config.train.steps, config.train.lr_g = 30, 2e-4
  with caplog.at_level(logging.WARNING):
    resume.write_config(tmp_path, config)
  assert (f"{tmp_path / 'config.json'} differs from this run's config (train.lr_g: 0.0001 -> "
          "0.0002; train.steps: 4 -> 30); the new config is used and saved.") in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    resume.write_config(tmp_path, config)  # the same config again: nothing to say
  assert "differs" not in caplog.text


def test_raising_train_steps_alone_says_the_run_continues_without_a_warning(tmp_path, caplog):
  # The README's way to train further warned that config.json differed from the run's config.
  config = tiny_config(tmp_path)
  resume.write_config(tmp_path, config)
  config.unlock()
  config.train.steps = 30
  with caplog.at_level(logging.INFO, logger=resume.__name__):
    resume.write_config(tmp_path, config)
  assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
      ("INFO", f"The run continues to step 30 (train.steps: 4 -> 30 since "
               f"{tmp_path / 'config.json'}).")]
  assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 30


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
  monkeypatch.setattr(preemption, "sync_manager_active", lambda: True)
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


def test_a_sigterm_while_the_last_checkpoint_is_written_lets_it_finish(shapes_data_dir, tmp_path,
                                                                        monkeypatch, caplog):
  """The watch ended with the loop, so a SIGTERM while manager.close() waited for the last save
  met the caller's handler (train.py's says "before a step could be saved") mid-save."""
  import signal
  config = tiny_config(shapes_data_dir)
  config.train.steps = config.train.ckpt_every = 1
  make_manager = checkpoint.make_manager

  def notice_during_close(*args):
    manager = make_manager(*args)
    close = manager.close
    manager.close = lambda: (signal.raise_signal(signal.SIGTERM), close())
    return manager
  monkeypatch.setattr(checkpoint, "make_manager", notice_during_close)

  class Terminated(BaseException):
    pass
  def terminate(signum, frame):
    raise Terminated
  previous = signal.signal(signal.SIGTERM, terminate)  # as train.py's, outside the loop
  try:
    with caplog.at_level(logging.WARNING):
      state = loop.train(config, tmp_path)
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert int(state.step) == 1 and make_manager(tmp_path, config).all_steps() == [1]
  assert ("SIGTERM received while the last checkpoint is written: stopping when it is complete"
          in caplog.text)
