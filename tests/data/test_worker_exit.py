"""Grain's worker processes end with the process reading from them, however it ends."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_READER = """
import sys, time
from llmimg_jax.data import pipeline
from llmimg_jax.text.tokenizer import load_tokenizer
if __name__ == "__main__":  # grain's workers are spawned: they import this file again
  cfg = pipeline.default_data_config()
  cfg.update(data_dir=sys.argv[1], config="tiny_32", image_size=32, num_workers=2)
  batches = pipeline.make_iterator(cfg, load_tokenizer(None, 16), batch_size_per_host=4, seed=0)
  next(batches)  # kept: its workers run on
  print("read", flush=True)
  time.sleep(300)
"""


def test_workers_end_with_a_reader_killed_by_sigkill(shapes_cfg, tmp_path):
  """A train.py killed with SIGKILL (or by the OOM killer) left its grain workers running, and
  multiprocessing's resource tracker they hold open (~240 MB each; they ignore SIGTERM): a set per
  crash and rerun."""
  (tmp_path / "reader.py").write_text(_READER)
  reader = subprocess.Popen([sys.executable, str(tmp_path / "reader.py"), shapes_cfg.data_dir],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
  assert reader.stdout.readline() == "read\n"
  tasks = os.listdir(f"/proc/{reader.pid}/task")
  children = {int(pid) for task in tasks
              for pid in open(f"/proc/{reader.pid}/task/{task}/children").read().split()}
  assert len(children) == 3  # two workers and the resource tracker
  reader.kill()
  reader.wait()

  def running(pid: int) -> bool:  # not a zombie, which no init in a container may reap
    try:
      with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
      return False

  deadline = time.monotonic() + 20
  while (left := [pid for pid in children if running(pid)]) and time.monotonic() < deadline:
    time.sleep(0.2)
  for pid in left:  # not left behind by the test either
    os.kill(pid, signal.SIGKILL)
  assert not left
