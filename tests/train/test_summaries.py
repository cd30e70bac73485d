import importlib.util
import subprocess
import sys

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
