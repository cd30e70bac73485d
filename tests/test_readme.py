"""The README's main command, run as a new user would (shortened by config overrides)."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.sample.utils import one_device_env

ROOT = Path(__file__).resolve().parents[1]


def readme_main_command() -> list[str]:
  """The train.py part of the README's first set-up command."""
  readme = (ROOT / "README.md").read_text()
  line = next(l for l in readme.splitlines() if "train.py --config configs/shapes_quick.py" in l)
  train = re.search(r"\S*python\S* (train\.py .*)$", line).group(1)
  return shlex.split(train)


def test_readme_main_command_trains_and_leaves_samples_and_logs(tmp_path):
  args = readme_main_command()
  assert args[:3] == ["train.py", "--config", "configs/shapes_quick.py"]
  workdir = tmp_path / "shapes_quick"
  args[args.index("--workdir") + 1] = str(workdir)
  overrides = ["--config.train.steps=4", "--config.train.sample_every=2",
               "--config.train.ckpt_every=2", "--config.data.config=tiny_32",
               f"--config.data.data_dir={tmp_path / 'tfds'}"]
  # A new user's machine: one CPU device (with the suite's faster-compiling XLA flags).
  env = one_device_env()
  del env["JAX_PLATFORMS"]  # nor does it name the platform: JAX probes what is installed
  result = subprocess.run([sys.executable, *args, *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  # JAX's probe for a TPU library that a CPU or GPU machine does not have is not reported.
  assert "libtpu" not in result.stderr
  assert sorted(p.name for p in (workdir / "samples").glob("*.png")) == [
      "step_0000002.png", "step_0000004.png"]
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert (workdir / "checkpoints" / "4").is_dir()


def test_readme_names_the_caption_each_real_image_is_mismatched_with():
  """The README said "the next caption"; the batch is rolled by one, so image i meets caption
  i - 1 (the first image the last caption)."""
  import numpy as np
  from llmimg_jax.gan import losses
  readme = " ".join((ROOT / "README.md").read_text().split())
  said = re.search(r"mismatched pairs are each real image with the (\w+) caption", readme)
  captions = np.asarray(losses.mismatched(np.arange(4)))  # the caption image i is paired with
  assert captions.tolist() == [3, 0, 1, 2]
  assert said and said.group(1) == "previous", said and said.group(0)


def test_readme_says_whether_ci_runs_the_shapes_evaluators_bounds():
  """The README called the evaluator's >= 99% bounds "the CI test"; they are slow tests, which CI
  (`-m "not slow"`) leaves out."""
  readme = " ".join((ROOT / "README.md").read_text().split())
  end = readme.index(">= 99% on every attribute")
  sentence = readme[readme.rindex("colour and size;", 0, end):end]  # what holds the bounds
  module = (ROOT / "tests/eval/test_shapes_eval.py").read_text()
  bounds = [t for t in module.split("\n\n\n") if ">= 0.99" in t and "def test_" in t]
  assert bounds and all("@pytest.mark.slow" in t for t in bounds)
  assert "CI test" not in sentence and "tests/eval/test_shapes_eval.py" in sentence, sentence
  assert "pytest -m slow" in sentence, sentence


def test_readme_counts_and_names_the_slow_tests():
  """The README said "the five longest tests" and named their files after a sixth slow test
  (tests/train/test_multihost_workers.py) was added: what `-m "not slow"` leaves out."""
  words = {5: "five", 6: "six", 7: "seven", 8: "eight"}
  slow = {}  # file -> number of slow tests in it
  for path in sorted((ROOT / "tests").rglob("test_*.py")):
    if n := path.read_text().count("\n@pytest.mark.slow\ndef test_"):
      slow[path.relative_to(ROOT).as_posix()] = n
  readme = " ".join((ROOT / "README.md").read_text().split())
  said = readme[readme.index('`-m "not slow"` leaves out the'):readme.index("Run them before")]
  assert f"the {words[sum(slow.values())]} longest tests" in said, (slow, said)
  assert [f for f in slow if f"`{f}`" not in said] == [], said


class _Choices:
  """A stand-in rng for shapes.caption_scene: integers() returns the scripted choices in turn,
  random() 0 (each object's phrase names its size)."""

  def __init__(self, choices):
    self._choices = iter(choices)

  def integers(self, n):
    return next(self._choices)

  def random(self):
    return 0.0


def test_docs_state_the_longest_possible_shapes_caption():
  """RESULTS_data.md said the longest caption the templates can produce has 198 bytes (199
  tokens); three 'a little snow-white three-sided shape' phrases in the top right, bottom left
  and bottom right corners (template 0) make the longest, 195 bytes (8abd919's search over every
  cell triple and template; configs/shapes_64.py says 195)."""
  import numpy as np
  from llmimg_jax.data import shapes
  triangle, white, small = (shapes.SHAPES.index("triangle"), shapes.COLORS.index("white"),
                            shapes.SIZES.index("small"))
  gt = {"num_objects": np.int32(3), "shape": np.array([triangle] * 3),
        "color": np.array([white] * 3), "size": np.array([small] * 3), "cell": np.array([2, 6, 8])}
  # Per object: 'three-sided shape', 'snow-white', 'little'; then each cell's first phrase,
  # template 0 and the first relation word.
  caption = shapes.caption_scene(gt, _Choices([1, 1, 1] * 3 + [0, 0, 0] + [0, 0]))
  assert caption.count("a little snow-white three-sided shape in the ") == 3, caption
  n = len(caption.encode())
  said = " ".join((ROOT / "benchmarks/RESULTS_data.md").read_text().split())
  assert f"the longest caption the templates can produce has {n} bytes" in said, n
  assert f"i.e. {n + 1} tokens" in said
  config = (ROOT / "configs/shapes_64.py").read_text()
  assert f"the longest possible caption has {n} bytes" in config
