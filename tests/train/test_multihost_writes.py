"""Host 0's writes during training (config.json, a sample grid, best.json), and each host's set-up
of the in-training evaluation, on two processes (jax.distributed on 127.0.0.1, gloo collectives):
one that fails stops both hosts at once. The others went on into the next collective, and all
were aborted (SIGABRT, status 134) by the distributed service five minutes later, without a word
of why on the hosts that had not failed."""
from __future__ import annotations

import sys

from tests.train.cli_utils import Proc, _devices_env, _free_port

_WRITE = """
import sys, types
from pathlib import Path
import jax
import numpy as np
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from llmimg_jax.eval import in_training
from llmimg_jax.train import resume
from llmimg_jax.train.samples import SampleWriter
from tests.train.utils import tiny_config
blocked = Path(sys.argv[3])  # a file: no folder can be made under it
images = np.zeros((2, 8, 8, 3), np.uint8)
grids = types.SimpleNamespace(images=lambda state: images, prompts=["a", "b"],
                              dir=blocked / "samples")
grids._write = lambda *args: SampleWriter._write(grids, *args)
in_training.generate_for_captions = lambda *args, **kwargs: images
in_training.fid.statistics = lambda features: (None, None)
in_training.fid.frechet_distance = lambda *args: 3.0
scores = lambda images, captions: {"caption_accuracy": 0.5, "num_images": 2}
evaluate = types.SimpleNamespace(
    models=None, tokenizer=None, captions=["a", "b"], seed=0, mesh=None, _cut_warned=True,
    evaluator=types.SimpleNamespace(score=scores, features=lambda images: None),
    reference=(None, None), best=None, floor=1.0, setup={}, real_scores={"caption_accuracy": 1},
    best_path=blocked / "best.json")
evaluate._write = lambda *args: in_training.TrainingEvaluator._write(evaluate, *args)
state = types.SimpleNamespace(ema_params=None, text_params=None)
config = tiny_config(str(blocked))
for name, call in (("config", lambda: resume.write_run_files(blocked / "run", config, None, None,
                                                             fresh=True)),
                   ("grid", lambda: SampleWriter.__call__(grids, state, 5, None)),
                   ("eval", lambda: in_training.TrainingEvaluator.__call__(evaluate, state, 5,
                                                                          None))):
  try:
    call()
    print(name, "written", flush=True)
  except Exception as e:
    print(name, "raised", type(e).__name__, flush=True)
    print(e, flush=True)

def set_up(self, config, n):  # host 1's evaluator cache cannot be read, say
  if jax.process_index() == 1:
    raise ValueError("no evaluator here")
in_training.TrainingEvaluator._set_up = set_up
try:
  in_training.TrainingEvaluator(None, None, config, blocked)
except Exception as e:
  print("setup raised", type(e).__name__, e, flush=True)
"""


def test_a_failure_on_one_host_stops_every_host(tmp_path):
  blocked = tmp_path / "blocked"
  blocked.write_text("a file where the workdir's folders would be")
  port = _free_port()
  procs = [Proc([sys.executable, "-c", _WRITE, f"127.0.0.1:{port}", str(i), str(blocked)],
                **_devices_env(1)) for i in range(2)]
  for i, proc in enumerate(procs):
    assert proc.finish(timeout=120) == 0, f"process {i}:\n{proc.output[-3000:]}"
  host_0, host_1 = (proc.output for proc in procs)
  for name in ("config", "grid", "eval"):
    assert f"{name} raised NotADirectoryError" in host_0, host_0[-3000:]
  assert (f"config raised RuntimeError\nHost 0 could not write {blocked / 'run' / 'config.json'}; "
          "its log has the error.\n") in host_1, host_1[-3000:]
  assert (f"grid raised RuntimeError\nHost 0 could not write the sample grid of step 5 in "
          f"{blocked / 'samples'}; its log has the error.\n") in host_1, host_1[-3000:]
  assert (f"eval raised RuntimeError\nHost 0 could not write {blocked / 'best.json'} (or the "
          "evaluation's TensorBoard scalars); its log has the error.\n") in host_1, host_1[-3000:]
  assert "setup raised ValueError no evaluator here" in host_1, host_1[-3000:]
  assert ("setup raised RuntimeError Host(s) [1] could not set up the in-training evaluation "
          "(config.eval); their logs have the error.") in host_0, host_0[-3000:]
