"""Two processes x two CPU devices (jax.distributed on 127.0.0.1, gloo collectives) train like
one process (this one, eight devices), stop together on a SIGTERM to one host, and resume (on
two processes, on one, and from one's checkpoint on two).

What is under test is processes (collectives, per-host input slices, an agreed preemption step,
resume), so the model is tiny_config without MA-GP, DiffAugment, attention and the contrastive
head (half the compile time of each run); the whole model's data-parallel equality is
tests/train/test_step.py::test_eight_devices_equal_one_device."""
from __future__ import annotations

import functools
import logging
import re
import shutil
import signal
import sys

import jax
import numpy as np
import pytest

from llmimg_jax.train import checkpoint, loop
from llmimg_jax.train.state import build_models, build_text, init_state
from tests.train.cli_utils import (
    Proc, _devices_env, _free_port, finished_steps, flags, train_args)
from tests.train.utils import tiny_config

STEPS = 6
# ckpt_every = STEPS: a checkpoint at the stop (before step STEPS) was saved because of the stop.
CHANGES = {"train.steps": STEPS, "train.log_every": 1, "train.ckpt_every": STEPS,
           "train.sample_every": 1000, "loss.gp": "none", "loss.diffaugment": "",
           "model.attn_resolutions": (), "loss.contrastive_weight": 0.0}  # tiny_config's


def _two_hosts(data_dir, workdir) -> list[Proc]:
  port = _free_port()
  return [Proc(train_args(data_dir, workdir, *flags(CHANGES),
                          f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                          f"--process_id={i}"), **_devices_env(2)) for i in range(2)]


def _finish_all(procs: list[Proc]) -> None:
  for i, proc in enumerate(procs):
    assert proc.finish(timeout=600) == 0, f"process {i}:\n{proc.output[-3000:]}"


def _restore(workdir, config, step: int):
  """The saved TrainState on this process's first device (saved from 2 x 2 devices)."""
  models = build_models(config, build_text(config)[1])
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          jax.eval_shape(functools.partial(init_state, models),
                                         jax.random.PRNGKey(0), None))
  return jax.device_get(checkpoint.restore(checkpoint.make_manager(workdir, config), step,
                                           abstract))


@pytest.mark.slow
def test_two_processes_match_one_stop_together_and_resume(shapes_data_dir, tmp_path, caplog):
  config = tiny_config(shapes_data_dir)
  config.update_from_flattened_dict(CHANGES)
  one = jax.device_get(loop.train(config, tmp_path / "one"))  # 1 process x 8 devices

  run = tmp_path / "two"
  # A data_dir without the dataset, shared by both hosts: one builds it while the other waits.
  shared_tfds = tmp_path / "tfds"
  procs = _two_hosts(shared_tfds, run)
  # The notice reaches the other host ~1 s later, 5 steps of this config once compiled (the run
  # then ended at its step 6 before stopping); sent as the loop starts, it arrives while the
  # first step compiles (~4 s), and the hosts agree on an early step.
  procs[0].wait_for(lambda: re.search(r"train:\s+0%", procs[0].output), timeout=600,
                    what="the training loop's start")
  procs[1].popen.send_signal(signal.SIGTERM)  # a preemption notice to one host only
  _finish_all(procs)
  assert all("2 process(es), 4 device(s)" in p.output for p in procs)
  assert ["Building captioned_shapes" in p.output for p in procs] == [True, False]
  stops = [int(re.search(r"Stopped by .* after step (\d+)", p.output).group(1)) for p in procs]
  assert stops[0] == stops[1] < STEPS, stops  # the agreed step, on both hosts
  assert finished_steps(run)[-1] == stops[0]
  data_dir = run / "checkpoints" / str(stops[0]) / "data"  # each host's input-iterator state
  assert sorted(p.name for p in data_dir.glob("process_*")) == [
      "process_0-of-2.json", "process_1-of-2.json"]

  # Without grain workers another number of processes resumes too: here one, with 8 devices,
  # saving every step; then two again, from its first save.
  shutil.copytree(run, tmp_path / "two_then_one")
  every_step = config.copy_and_resolve_references()
  every_step.train.ckpt_every, every_step.train.keep_checkpoints = 1, None
  with caplog.at_level(logging.INFO):
    two_then_one = jax.device_get(loop.train(every_step, tmp_path / "two_then_one"))
  assert "input position saved by 2 process(es) on this run's 1" in caplog.text
  assert stops[0] + 1 < STEPS, stops
  shutil.copytree(tmp_path / "two_then_one" / "checkpoints" / str(stops[0] + 1),
                  tmp_path / "one_then_two" / "checkpoints" / str(stops[0] + 1))
  procs = _two_hosts(shared_tfds, tmp_path / "one_then_two")
  _finish_all(procs)
  assert all("input position saved by 1 process(es) on this run's 2" in p.output for p in procs)
  one_then_two = _restore(tmp_path / "one_then_two", config, STEPS)

  procs = _two_hosts(shared_tfds, run)
  _finish_all(procs)
  assert all(f"at step {stops[0]}" in p.output for p in procs)
  two = _restore(run, config, STEPS)
  for resumed in (two, two_then_one, one_then_two):
    assert int(one.step) == int(resumed.step) == STEPS
    _assert_close(one, resumed)


def _assert_close(one, two) -> None:
  # Equal up to float summation order (the gradient all-reduce differs between 1 x 8 and 2 x 2
  # devices): >= 99.9% of all numbers within 1e-5, every one within 1e-4. Adam (beta1 = 0)
  # divides each gradient by its own RMS, so an entry whose gradient is ~0 can move by a
  # fraction of lr_d (4e-4) on summation noise alone (seen: 1 of 2304 in a D kernel, 1.03e-5).
  pairs = list(zip(jax.tree_util.tree_leaves_with_path(one), jax.tree.leaves(two)))
  close = sum(int(np.sum(np.isclose(b, a, rtol=1e-5, atol=1e-5))) for (_, a), b in pairs)
  assert close >= 0.999 * sum(np.size(a) for (_, a), _ in pairs)
  for (path, a), b in pairs:
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-4, err_msg=jax.tree_util.keystr(path))


def test_hosts_that_do_not_share_the_data_dir_fail_together(shapes_data_dir, tmp_path):
  """Host 1's data_dir lacks host 0's build (e.g. ~/tensorflow_datasets on each host's disk): both
  stop with the fix named, instead of host 1 building its own copy while host 0 times out."""
  port = _free_port()
  procs = [Proc(train_args(data_dir, tmp_path / "run", *flags(CHANGES),
                           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                           f"--process_id={i}"), **_devices_env(2))
           for i, data_dir in enumerate((shapes_data_dir, tmp_path / "host1_tfds"))]
  for proc in procs:
    assert proc.finish(timeout=600) == 2, proc.output[-3000:]
    assert "Host(s) [1] do not see the captioned_shapes dataset" in proc.output, proc.output[-3000:]
    assert "must be a location all hosts share" in proc.output
    assert "Traceback" not in proc.output
  assert not (tmp_path / "host1_tfds").exists()


_NOTICE_BEFORE_THE_LOOP = """
import os, signal, sys, time
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from jax.experimental import multihost_utils
from llmimg_jax.train.preemption import PreemptionWatch

class Manager:  # what PreemptionWatch asks of an Orbax CheckpointManager
  reached_preemption = staticmethod(multihost_utils.reached_preemption_sync_point)

if jax.process_index() == 1:
  os.kill(os.getpid(), signal.SIGTERM)  # during the restore and compile of a resumed run
multihost_utils.sync_global_devices("notice sent")
time.sleep(1.0)
with PreemptionWatch(Manager()) as watch:
  for done in range(101, 121):  # resumed at step 100
    if watch.reached():
      break
    time.sleep(0.2)
  else:
    done = None
print("stopped after step", done, flush=True)
"""


def test_a_notice_before_a_resumed_runs_first_step_stops_every_host(tmp_path):
  port = _free_port()
  procs = [Proc([sys.executable, "-c", _NOTICE_BEFORE_THE_LOOP, f"127.0.0.1:{port}", str(i)],
                **_devices_env(1)) for i in range(2)]
  for i, proc in enumerate(procs):
    assert proc.finish(timeout=120) == 0, f"process {i}:\n{proc.output[-3000:]}"
  stops = [re.search(r"stopped after step (\w+)", p.output).group(1) for p in procs]
  assert stops[0] == stops[1] != "None", stops  # the same step (101 unless the notice is slow)


_NOTICE_AFTER_A_SAVE = """
import os, signal, sys, time
import jax
import numpy as np
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from jax.experimental import multihost_utils
from llmimg_jax.train import checkpoint
from llmimg_jax.train.config import base_config
from llmimg_jax.train.preemption import PreemptionWatch

config = base_config()
manager = checkpoint.make_manager(sys.argv[3], config)
with PreemptionWatch(manager) as watch:
  for done in range(101, 121):  # resumed at step 100
    if watch.reached():
      break
    if done == 101:  # a checkpoint step; the notice comes while it is written
      checkpoint.save(manager, done, {"w": np.zeros(3, np.float32)}, None, config)
      manager.wait_until_finished()
      if jax.process_index() == 1:
        os.kill(os.getpid(), signal.SIGTERM)
      multihost_utils.sync_global_devices("notice sent")
      time.sleep(1.0)
    time.sleep(0.2)
  else:
    done = None
manager.close()
print("stopped after step", done, flush=True)
"""


def test_a_notice_after_a_resumed_runs_checkpoint_stops_every_host(tmp_path):
  """Orbax's save asks JAX's sync manager with the checkpoint's step number, which replaced the
  count of steps since this process started: the agreed step was then 102, which that count
  reaches only 100 steps later, long after the grace period."""
  port = _free_port()
  procs = [Proc([sys.executable, "-c", _NOTICE_AFTER_A_SAVE, f"127.0.0.1:{port}", str(i),
                 str(tmp_path / "run")], **_devices_env(1)) for i in range(2)]
  for i, proc in enumerate(procs):
    assert proc.finish(timeout=120) == 0, f"process {i}:\n{proc.output[-3000:]}"
  stops = [re.search(r"stopped after step (\w+)", p.output).group(1) for p in procs]
  assert stops[0] == stops[1] != "None", stops  # the same step (102 unless the notice is slow)


def test_a_dataset_build_failing_on_host_0_stops_every_host(shapes_data_dir, tmp_path):
  folder = tmp_path / "images"
  folder.mkdir()
  (folder / "a.png").write_bytes(b"not a png")  # no usable image: host 0's build fails
  (folder / "captions.jsonl").write_text('{"file": "a.png", "caption": "a red circle"}\n')
  port = _free_port()
  procs = [Proc(train_args(shapes_data_dir, tmp_path / "run", *flags(CHANGES),
                           "--config.data.name=captioned_folder", f"--config.data.folder={folder}",
                           f"--config.data.data_dir={tmp_path / 'tfds'}",
                           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                           f"--process_id={i}"), **_devices_env(2)) for i in range(2)]
  codes = [proc.finish(timeout=240) for proc in procs]
  assert codes == [2, 2], [p.output[-3000:] for p in procs]
  assert "no usable image in" in procs[0].output
  assert "Host 0 could not build or open the captioned_folder dataset" in procs[1].output
  assert not any("Traceback" in p.output for p in procs)


_HOST_0_FAILS = """
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from llmimg_jax.train import checkpoint, hosts
print("result", hosts.on_host_0(lambda: 7, "works", "return 7"), flush=True)

def move():
  raise PermissionError("[Errno 13] Permission denied: 'corrupt_checkpoints'")
try:
  hosts.on_host_0(move, "fails", "move unreadable checkpoints aside",
                  checkpoint.CorruptCheckpointError)
except Exception as e:
  print("raised", type(e).__name__, e, flush=True)
"""


def test_a_failure_in_host_0_only_work_stops_every_host():
  port = _free_port()
  procs = [Proc([sys.executable, "-c", _HOST_0_FAILS, f"127.0.0.1:{port}", str(i)],
                **_devices_env(1)) for i in range(2)]
  for i, proc in enumerate(procs):
    assert proc.finish(timeout=120) == 0, f"process {i}:\n{proc.output[-3000:]}"
  assert "result 7" in procs[0].output and "result None" in procs[1].output
  assert "raised PermissionError [Errno 13] Permission denied" in procs[0].output
  assert ("raised CorruptCheckpointError Host 0 could not move unreadable checkpoints aside; its "
          "log has the error.") in procs[1].output


_CHECK_WORKDIR = """
import functools, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from llmimg_jax.train import loop, workdir as workdir_module
# A shared filesystem's grace period for the probe file: 0.5 s, not 5 s, on this one disk.
workdir_module._sees = functools.partial(workdir_module._sees, wait_s=0.5)
for workdir in sys.argv[3:]:  # one check after the other, as two runs would
  try:
    loop.check_workdir_writable(loop.local_workdir(workdir))
    print("shared", workdir, flush=True)
  except Exception as e:
    print("raised", type(e).__name__, e, flush=True)
"""


def test_a_workdir_on_each_hosts_own_disk_is_refused_before_training(tmp_path):
  """Host 1's workdir is not host 0's (the same path on each host's own disk): both stop with the
  fix named, instead of host 1 failing at the first checkpoint with a FileNotFoundError while
  host 0 waits. A shared workdir passes, and no probe file is left in it. One pair of processes
  checks a shared workdir, then one on each host's disk."""
  shared, own = tmp_path / "shared", [tmp_path / "host0", tmp_path / "host1"]
  for workdir in (shared, *own):
    workdir.mkdir()
  port = _free_port()
  procs = [Proc([sys.executable, "-c", _CHECK_WORKDIR, f"127.0.0.1:{port}", str(i), str(shared),
                 str(w)], **_devices_env(1)) for i, w in enumerate(own)]
  for i, proc in enumerate(procs):
    assert proc.finish(timeout=120) == 0, f"process {i}:\n{proc.output[-3000:]}"
  for proc, workdir in zip(procs, own):  # the same path on real hosts
    assert f"shared {shared}\n" in proc.output, proc.output[-3000:]
    assert ("raised WorkdirNotSharedError Host(s) [1] do not see the file host 0 wrote in "
            f"{workdir}, so the workdir") in proc.output, proc.output[-3000:]
    assert "on a filesystem every host mounts at the same path" in proc.output
  assert not [p for p in tmp_path.rglob(".shared_test.*")]


def test_a_process_waiting_for_the_others_says_what_they_need(shapes_data_dir, tmp_path):
  """A lone host (the others not started, or with another --coordinator_address) waits minutes in
  jax.distributed.initialize, then aborts with DEADLINE_EXCEEDED: the wait names the fix first."""
  proc = Proc(train_args(shapes_data_dir, tmp_path / "run", f"--coordinator_address=127.0.0.1:"
                         f"{_free_port()}", "--num_processes=2", "--process_id=1"),
              **_devices_env(1))
  try:
    proc.wait_for(lambda: "Process 1 of 2: waiting up to 300 s" in proc.output, timeout=60,
                  what="the notice of the wait")
  finally:
    proc.popen.kill()
    proc.finish()
  assert ("If this times out (DEADLINE_EXCEEDED), start each with this --coordinator_address "
          "(process 0's host:port) and --num_processes, and its own --process_id (0 to 1).") \
      in proc.output


_CHECK_CONFIG = """
import sys
from pathlib import Path
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from llmimg_jax.train.same_config import check_same_config
from tests.train.utils import tiny_config
for i in range(3, len(sys.argv), 3):  # one check after the other, as two starts would
  workdir, data_dir, steps = sys.argv[i:i + 3]
  config = tiny_config(data_dir)  # data_dir: each host's own, compared by its dataset check
  config.train.steps = int(steps)
  try:
    check_same_config(config, Path(workdir))
    print("same", flush=True)
  except Exception as e:
    print("raised", type(e).__name__, e, flush=True)
"""


def test_hosts_started_with_other_configs_or_workdirs_fail_together(tmp_path):
  """A host with another --config.train.steps (or --workdir) trained on until a collective the
  others never reached, and every host hung until JAX's timeouts aborted it. One pair of
  processes checks the same configs (in each host's own data_dir), then differing ones."""
  hosts = [[("run", "tfds0", 8), ("run", "tfds0", 8)],  # host 0: same, then differ
           [("run", "tfds1", 8), ("other_run", "tfds0", 4)]]  # host 1
  port = _free_port()
  procs = [Proc([sys.executable, "-c", _CHECK_CONFIG, f"127.0.0.1:{port}", str(i),
                 *(str(a) for workdir, data_dir, steps in checks
                   for a in (tmp_path / workdir, tmp_path / data_dir, steps))],
                **_devices_env(1)) for i, checks in enumerate(hosts)]
  for i, proc in enumerate(procs):
    assert proc.finish(timeout=120) == 0, f"process {i}:\n{proc.output[-3000:]}"
  results = [[line for line in p.output.splitlines() if line.startswith(("same", "raised "))]
             for p in procs]
  assert [r[0] for r in results] == ["same", "same"] and len(results[0]) == len(results[1]) == 2, (
      [p.output[-3000:] for p in procs])
  host_0, host_1 = (r[1] for r in results)
  assert ("raised ConfigDiffersError Every host must train the same config into the same "
          "--workdir, but host(s) [1] differ from this one's; their logs name the values. Start "
          "every host with the same --config file, --config.* overrides and --workdir") in host_0
  assert (f"but this host's differ from host 0's (config.train.steps: 8 -> 4; workdir: "
          f"{str(tmp_path / 'run')!r} -> {str(tmp_path / 'other_run')!r}; host 0's value "
          "first)") in host_1, host_1


def test_a_config_error_on_one_host_stops_every_host(shapes_data_dir, tmp_path):
  """Host 1's --workdir is refused before its devices start: host 0 waited for them for minutes
  (and host 1, exiting, for host 0), instead of both stopping with status 2."""
  port = _free_port()
  procs = [Proc(train_args(shapes_data_dir, workdir, *flags(CHANGES),
                           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                           f"--process_id={i}"), **_devices_env(1))
           for i, workdir in enumerate((tmp_path / "run", "gs://bucket/run"))]
  for proc in procs:
    assert proc.finish(timeout=90) == 2, proc.output[-3000:]
    assert "Traceback" not in proc.output
  assert ("train.py: error: host(s) [1] stopped with a config error, which their logs name; "
          "nothing was trained.") in procs[0].output
  assert "train.py: error: workdir 'gs://bucket/run' is a URL" in procs[1].output
