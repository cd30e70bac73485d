import importlib.util
import subprocess
import sys

import numpy as np

from llmimg_jax.train.summaries import window_means
from tests.train.cli_utils import ROOT, env
from tests.train.utils import _scalars

# A fresh process, as train.py starts: the pytest worker has imported torch already.
_WRITE = """
import sys
import numpy as np
from llmimg_jax.train import loop  # everything train.py imports before training
from llmimg_jax.train.summaries import summary_writer
writer = summary_writer(sys.argv[1], purge_step=1)
writer.add_scalar("loss", np.float32(0.25), 1)
writer.add_image("samples", np.zeros((8, 8, 3), np.uint8), 1, dataformats="HWC")
writer.close()
print("torch imported:", "torch" in sys.modules)
if sys.argv[2] == "1":
  import torch
  print("torch importable after:", torch.zeros(2).sum().item() == 0.0)
"""


def test_the_summary_writer_writes_events_without_importing_torch(tmp_path):
  has_torch = importlib.util.find_spec("torch") is not None
  out = subprocess.run([sys.executable, "-c", _WRITE, str(tmp_path), str(int(has_torch))],
                       env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "torch imported: False" in out.stdout, out.stdout
  if has_torch:  # hidden only while tensorboardX loads
    assert "torch importable after: True" in out.stdout, out.stdout
  assert _scalars(tmp_path, "loss") == {1: 0.25}


def test_flush_writes_every_event_added_so_far(tmp_path):
  """What a kill -9 right after flush() leaves: tensorboardX's own flush() missed the events its
  writer thread had not yet taken from its queue (an image added just before), and otherwise the
  file is flushed every 2 minutes."""
  import numpy as np
  from llmimg_jax.train.summaries import flush, summary_writer
  from tests.train.test_reliability import _tags
  writer = summary_writer(tmp_path, purge_step=1)
  for step in range(1, 4):
    writer.add_scalar("train/d_loss", 0.5, step)
    writer.add_image("samples", np.zeros((64, 64, 3), np.uint8), step, dataformats="HWC")
    flush(writer)
    assert _tags(tmp_path).count("samples") == step  # on disk, the writer still open
  writer.add_scalar("train/d_loss", 0.5, 4)  # the writer thread goes on after a flush
  writer.close()
  assert sorted(_scalars(tmp_path, "train/d_loss")) == [1, 2, 3, 4]


def test_window_means_average_the_updates_made_over_the_steps_that_measured_each_metric():
  nan = float("nan")
  steps = [{"d_loss": 1.0, "gp": 0.5, "d_mismatch": nan, "finite": 1.0},
           {"d_loss": nan, "gp": nan, "d_mismatch": nan, "finite": 0.0},  # skipped update
           {"d_loss": 3.0, "gp": nan, "d_mismatch": nan, "finite": 1.0}]
  # The skipped step's NaN is left out of d_loss; gp is the one penalty step's; no step
  # measured d_mismatch.
  assert window_means(steps) == {"d_loss": 2.0, "gp": 0.5, "finite": 1.0}
  # Every update skipped: the losses are NaN, not left out.
  means = window_means(steps[1:2])
  assert np.isnan(means["d_loss"]) and np.isnan(means["gp"]) and means["finite"] == 0.0
