"""The train step as the loop runs it on the 8-device mesh: compiled once per run (nothing after
the first log, checkpoint and sample grid), the batch sharded over the data axis, the state
replicated and its buffers donated.

On XLA:CPU a donation needs the buffers unshared: Orbax's asynchronous save holds numpy views of
the state's (its copy to host memory shares them) until its write ends, and a step started
before that copies the state instead of donating it (PJRT's CPU fallback). The test waits for
each save, as a run on an accelerator (whose copy to host is a real copy) need not.

The loop reads no device value between its logging steps (a float() or a Python `if` on a step's
output would wait for that step: no step dispatched ahead of the device). jax.transfer_guard cannot
show it here, as it lets every XLA:CPU fetch through; the test counts the reads of jax.Array's
_value, which np.asarray, float, bool, .item() and jax.device_get of an array over several devices
(a step's outputs here) all go through. (A one-device CPU array's np.asarray and .item() read its
buffer directly: a one-device test would not count them.)"""
import collections

import jax
from jax._src import array as jax_array
from jax.sharding import NamedSharding, PartitionSpec as P

from llmimg_jax.train import checkpoint, loop
from tests.train.utils import lowered_programs, tiny_config


def test_the_loop_compiles_its_step_once_and_donates_the_replicated_state(
    shapes_data_dir, tmp_path, monkeypatch):
  config = tiny_config(shapes_data_dir)
  # Steps 2 and 4 log, save and sample; steps 1 and 3 (and 5 after the resume) only train.
  config.train.update(steps=4, log_every=2, ckpt_every=2, sample_every=2)
  # Per train() call: the programs lowered, how many there were at each step call, the device
  # values read before each step call, and the types and shardings of the first step's state.
  runs = []
  jit_train_step = loop.jit_train_step
  reads = [0]
  value = jax_array.ArrayImpl._value

  def counted(self):
    reads[0] += 1
    return value.fget(self)

  def checked(models, mesh):
    step_fn = jit_train_step(models, mesh)
    assert mesh.devices.size == 8

    def sharded(tree, sharding) -> bool:
      return all(x.sharding.is_equivalent_to(sharding, x.ndim) for x in jax.tree.leaves(tree))

    def step(state, batch):
      run = runs[-1]
      if not run["at_call"]:  # what the run compiles its step for
        run["input"] = jax.tree.map(lambda x: (jax.typeof(x), x.sharding), state)
      assert sharded(batch, NamedSharding(mesh, P("data")))
      assert sharded(state, NamedSharding(mesh, P()))  # replicated
      run["at_call"].append(len(run["lowered"]))
      run["reads"].append(reads[0])
      new_state, metrics = step_fn(state, batch)
      # Donated: the loop cannot read the old state by mistake, and no copy of it is kept.
      assert all(x.is_deleted() for x in jax.tree.leaves(state))
      assert sharded((new_state, metrics), NamedSharding(mesh, P()))
      return new_state, metrics
    return step

  def save_and_wait(manager, *args, **kwargs):
    saved = save(manager, *args, **kwargs)
    manager.wait_until_finished()
    return saved

  save = checkpoint.save
  monkeypatch.setattr(checkpoint, "save", save_and_wait)
  monkeypatch.setattr(loop, "jit_train_step", checked)
  monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(counted))
  for steps in (4, 6):  # then resumed at step 4, as a new process would be
    config.train.steps = steps
    with lowered_programs() as lowered:
      runs.append({"lowered": lowered, "at_call": [], "reads": []})
      loop.train(config, tmp_path)
      runs[-1]["reads"].append(reads[0])
  assert [len(run["at_call"]) for run in runs] == [4, 2]
  # Device values are read after the logging steps (2, 4 and 6: their metrics, sample grids),
  # none after steps 1, 3 and 5 (nor while reading and placing the batch of the next step).
  read_after_step = [[b > a for a, b in zip(r["reads"], r["reads"][1:])] for r in runs]
  assert read_after_step == [[False, True, False, True], [False, True]], read_after_step
  for run in runs:
    compiled = collections.Counter(run["lowered"])
    assert compiled["jit(train_step)"] == compiled["jit(generate_images)"] == 1, compiled
  # A fresh start initialises the state; a resume restores into its shapes, compiling nothing.
  assert [collections.Counter(run["lowered"])["jit(init_state)"] for run in runs] == [1, 0]
  # After step 2's log, checkpoint and grid, steps 3 and 4 and theirs compile nothing new.
  first = runs[0]
  assert first["lowered"][first["at_call"][2]:] == [], first["lowered"]
  # The resumed run's first state is a fresh run's in types (weak types included) and
  # shardings: the same program, which a restarted process with JAX's persistent compilation
  # cache (JAX_COMPILATION_CACHE_DIR) loads instead of compiling.
  assert runs[0]["input"] == runs[1]["input"]
