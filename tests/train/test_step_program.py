"""The train step as the loop runs it on the 8-device mesh: compiled once per run (nothing after
the first log, checkpoint and sample grid), the batch sharded over the data axis, the state
replicated and its buffers donated.

(jax.transfer_guard cannot show here that the loop fetches nothing between its logging steps: an
XLA:CPU array is in host memory already, and the guard lets every CPU fetch through.)"""
import collections

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from llmimg_jax.train import loop
from tests.train.utils import tiny_config


def test_the_loop_compiles_its_step_once_and_donates_the_replicated_state(
    shapes_data_dir, tmp_path, monkeypatch):
  config = tiny_config(shapes_data_dir)
  # Steps 2 and 4 log, save and sample; steps 1 and 3 (and 5 after the resume) only train.
  config.train.update(steps=4, log_every=2, ckpt_every=2, sample_every=2)
  runs = []  # per train() call: {"calls": steps run, "lowered": [(calls, program)], "input": ..}
  jit_train_step = loop.jit_train_step

  def on_event(event: str, duration: float, **kwargs):
    del duration
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":  # lowered: a jit cache miss
      runs[-1]["lowered"].append((runs[-1]["calls"], kwargs["fun_name"]))

  def checked(models, mesh):
    step_fn = jit_train_step(models, mesh)
    assert mesh.devices.size == 8

    def sharded(tree, sharding) -> bool:
      return all(x.sharding.is_equivalent_to(sharding, x.ndim) for x in jax.tree.leaves(tree))

    def step(state, batch):
      run = runs[-1]
      if not run["calls"]:  # what the run compiles its step for
        run["input"] = jax.tree.map(lambda x: (jax.typeof(x), x.sharding), state)
      assert sharded(batch, NamedSharding(mesh, P("data")))
      assert sharded(state, NamedSharding(mesh, P()))  # replicated
      new_state, metrics = step_fn(state, batch)
      run["calls"] += 1
      # Donated: the loop cannot read the old state by mistake, and no copy of it is kept.
      assert all(x.is_deleted() for x in jax.tree.leaves(state))
      assert sharded((new_state, metrics), NamedSharding(mesh, P()))
      return new_state, metrics
    return step

  monkeypatch.setattr(loop, "jit_train_step", checked)
  jax.monitoring.register_event_duration_secs_listener(on_event)
  try:
    for steps in (4, 6):  # then resumed at step 4, as a new process would be
      runs.append({"calls": 0, "lowered": []})
      config.train.steps = steps
      loop.train(config, tmp_path)
  finally:
    jax.monitoring.unregister_event_duration_listener(on_event)
  assert [run["calls"] for run in runs] == [4, 2]
  for run in runs:
    compiled = collections.Counter(name for _, name in run["lowered"])
    assert compiled["jit(train_step)"] == compiled["jit(generate_images)"] == 1, compiled
  # After step 2's log, checkpoint and grid, steps 3 and 4 and theirs compile nothing new.
  assert [name for calls, name in runs[0]["lowered"] if calls > 2] == [], runs[0]["lowered"]
  # The resumed run's first state is a fresh run's in types (weak types included) and
  # shardings: a restarted process finds its step in the persistent compilation cache.
  assert runs[0]["input"] == runs[1]["input"]
