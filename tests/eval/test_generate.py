"""generate_for_captions: image i is the generator's output for caption i and noise i, each
batch split over the mesh's devices (one host or several)."""
import logging
import sys

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from llmimg_jax.eval import generate
from llmimg_jax.eval.generate import generate_for_captions
from llmimg_jax.train.mesh import make_mesh
from llmimg_jax.train.state import build_models, build_text
from tests.memory import traced_peaks
from tests.sample.utils import _quick_state, assert_uint8_of, generator_output
from tests.train.utils import tiny_config

# 11 captions: not a multiple of 8 (nor 4) devices, so the last batch wraps around.
CAPTIONS = [f"a {size} {colour} {shape}" for size, colour, shape in (
    ("big", "red", "circle"), ("small", "blue", "square"), ("big", "green", "triangle"),
    ("small", "red", "square"), ("big", "blue", "circle"), ("small", "green", "circle"),
    ("big", "red", "triangle"), ("small", "blue", "triangle"), ("big", "green", "square"),
    ("small", "red", "circle"), ("big", "blue", "square"))]


def _setup(data_dir):
  config = tiny_config(data_dir)
  tokenizer, t5_config, pretrained = build_text(config)
  models = build_models(config, t5_config)
  return config, tokenizer, models, _quick_state(models, pretrained)  # replicated on 8 devices


def assert_same_images(a: np.ndarray, b: np.ndarray) -> None:
  """The same images up to a uint8 step where XLA's float rounding differs between the batch
  shapes of one device and of eight (a row each)."""
  assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
  difference = np.abs(a.astype(np.int16) - b)
  assert difference.max() <= 1 and (difference > 0).mean() < 1e-3, difference.max()


def test_each_image_comes_from_its_caption_and_its_noise(tmp_path):
  config = tiny_config(tmp_path)
  tokenizer, t5_config, pretrained = build_text(config)
  models = build_models(config, t5_config)
  state = jax.device_get(_quick_state(models, pretrained))
  captions = ["a red circle", "a blue square on the left", "a green triangle"]
  # batch_size 2: the second batch wraps around to caption 0 and drops it.
  images = generate_for_captions(models, state.ema_params, state.text_params, tokenizer,
                                 captions, seed=3, batch_size=2)
  assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
  tokens = tokenizer(captions)
  for i in range(3):
    z = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(3), i), (1, config.model.z_dim))
    x = generator_output(models, state.ema_params, state.text_params, z,
                         tokens["input_ids"][i:i + 1], tokens["attention_mask"][i:i + 1])
    assert x.min() < -0.5 and x.max() > 0.5  # the [-1, 1] -> [0, 255] mapping is exercised
    assert_uint8_of(images[i], x)


def test_non_finite_generator_output_is_refused_when_checked(tmp_path):
  """evaluate.py scored NaN generator output (cast to flat uint8 colour) without a word."""
  import pytest
  config = tiny_config(tmp_path)
  tokenizer, t5_config, pretrained = build_text(config)
  models = build_models(config, t5_config)
  state = jax.device_get(_quick_state(models, pretrained))
  nan_params = jax.tree_util.tree_map(lambda x: x * np.nan, state.ema_params)
  captions = ["a red circle", "a green triangle"]
  images = generate_for_captions(models, nan_params, state.text_params, tokenizer, captions)
  assert images.shape == (2, 32, 32, 3)  # unchecked (training's evaluation): still images
  with pytest.raises(ValueError, match=r"2 of 2 generated images are not finite.*'a red circle'"
                     r".*earlier --step"):
    generate_for_captions(models, nan_params, state.text_params, tokenizer, captions,
                          check_finite=True)


def test_eight_devices_each_generate_a_share_of_the_batch_and_the_same_images(
    tmp_path, monkeypatch):
  """Generation ran the whole batch on every device of the mesh (the batch unsharded, the params
  replicated), so 8 GPUs were no faster than one. Now each batch is split over 'data'."""
  _, tokenizer, models, state = _setup(tmp_path)
  calls = []  # per batch: its arguments and outputs
  jitted = generate._jitted

  def spy(models, mesh):
    fn = jitted(models, mesh)

    def call(*args):
      out = fn(*args)
      calls.append((mesh, args, out))
      return out
    return call

  monkeypatch.setattr(generate, "_jitted", spy)
  eight = generate_for_captions(models, state.ema_params, state.text_params, tokenizer, CAPTIONS,
                                seed=3, batch_size=8, mesh=make_mesh())
  assert len(calls) == 2  # 11 captions: batches of 8 rows, one per device, the last wrapped
  for mesh, (g_params, text_params, key, *rows), out in calls:
    assert mesh.devices.size == 8
    assert all(x.shape[0] == 8 and x.sharding.is_equivalent_to(
        NamedSharding(mesh, P("data")), x.ndim) for x in rows)
    replicated = NamedSharding(mesh, P())
    assert all(x.sharding.is_equivalent_to(replicated, x.ndim)
               for x in jax.tree.leaves((g_params, text_params, key, out)))
  one = generate_for_captions(models, state.ema_params, state.text_params, tokenizer, CAPTIONS,
                              seed=3, batch_size=8, mesh=make_mesh(jax.devices()[:1]))
  assert calls[-1][0].devices.size == 1 and eight.shape == (11, 32, 32, 3)
  assert_same_images(eight, one)



def test_the_next_batch_runs_while_the_host_copies_the_previous_one(tmp_path, monkeypatch):
  """Each batch was copied to the host before the next was dispatched, so the device idled
  while the host copied. Not every batch at the end either: each holds its images on every
  device (30k 256px images are 5.9 GB)."""
  _, tokenizer, models, state = _setup(tmp_path)
  events, jitted, device_get = [], generate._jitted, jax.device_get

  def spy(models, mesh):
    fn = jitted(models, mesh)

    def call(*args):
      out = fn(*args)
      events.append(("run", out))
      return out
    return call

  def get(x):
    events.append(("get", x))
    return device_get(x)

  monkeypatch.setattr(generate, "_jitted", spy)
  monkeypatch.setattr(jax, "device_get", get)
  images = generate_for_captions(models, state.ema_params, state.text_params, tokenizer,
                                 CAPTIONS, seed=3, batch_size=4, mesh=make_mesh(jax.devices()[:1]))
  outputs = [x for what, x in events if what == "run"]
  assert len(outputs) == 3 and images.shape == (11, 32, 32, 3)  # batches of 4, the last wrapped
  batch = [next(i for i, out in enumerate(outputs) if out is x) for _, x in events]
  assert list(zip((what for what, _ in events), batch)) == [
      ("run", 0), ("run", 1), ("get", 0), ("run", 2), ("get", 1), ("get", 2)]


def test_the_host_holds_the_images_once_not_every_batch_and_their_concatenation(
    tmp_path, monkeypatch):
  """The fetched batches were kept and concatenated at the end: twice the images' bytes on the
  host (on a CPU more: each fetched batch kept its device buffers alive), 12 GB for evaluate.py's
  30k 256px images. Each batch is now copied into the result as it is fetched."""
  _, tokenizer, models, state = _setup(tmp_path)
  captions = [f"a red circle number {i}" for i in range(1000)]
  mesh, device_get = make_mesh(), jax.device_get
  # A copy, as from a GPU (a CPU's device_get gives views of XLA's buffers, which tracemalloc
  # does not count).
  monkeypatch.setattr(jax, "device_get", lambda x: jax.tree.map(np.array, device_get(x)))
  generate_for_captions(models, state.ema_params, state.text_params, tokenizer, captions[:64],
                        mesh=mesh)  # compiled: the same batch of 64 rows
  nbytes = len(captions) * 32 * 32 * 3  # the images'
  images, peaks = traced_peaks(lambda: generate_for_captions(
      models, state.ema_params, state.text_params, tokenizer, captions, mesh=mesh), 1.5 * nbytes)
  assert images.shape == (1000, 32, 32, 3) and images.nbytes == nbytes
  # The images, their tokens (a sixth of their bytes at 32px) and a batch: 1.18 (was 2.17). A
  # thread of an earlier test allocating 1 MB at once tips the bound: see traced_peaks.
  assert min(peaks) < 1.5 * nbytes, [p / nbytes for p in peaks]


_ON_TWO_HOSTS = """
import sys
from pathlib import Path
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
import numpy as np
from llmimg_jax.eval.generate import generate_for_captions
from llmimg_jax.train.mesh import make_mesh
from llmimg_jax.train.samples import SampleWriter
from tests.eval.test_generate import CAPTIONS, _setup
config, tokenizer, models, state = _setup(sys.argv[3])  # replicated on both hosts' devices
mesh = make_mesh()
images = generate_for_captions(models, state.ema_params, state.text_params, tokenizer, CAPTIONS,
                               seed=3, batch_size=4, mesh=mesh)
grid = SampleWriter(models, tokenizer, config, Path(sys.argv[3]), mesh).images(state)
np.savez(f"{sys.argv[3]}/host_{jax.process_index()}.npz", images=images, grid=grid)
"""


def test_two_hosts_generate_together_and_each_gets_every_image(tmp_path):
  """train() under jax.distributed evaluates and draws its sample grid on the mesh of every
  host's devices: each host passes the same captions (and noise) and gets every image."""
  from llmimg_jax.train.samples import SampleWriter
  from tests.train.cli_utils import Proc, _devices_env, _free_port
  port = _free_port()
  procs = [Proc([sys.executable, "-c", _ON_TWO_HOSTS, f"127.0.0.1:{port}", str(i),
                 str(tmp_path)], **_devices_env(2)) for i in range(2)]
  for i, proc in enumerate(procs):
    assert proc.finish(timeout=240) == 0, f"process {i}:\n{proc.output[-3000:]}"
  config, tokenizer, models, state = _setup(tmp_path)
  one = make_mesh(jax.devices()[:1])
  images = generate_for_captions(models, state.ema_params, state.text_params, tokenizer,
                                 CAPTIONS, seed=3, batch_size=4, mesh=one)
  grid = SampleWriter(models, tokenizer, config, tmp_path, one).images(state)
  for host in range(2):
    with np.load(tmp_path / f"host_{host}.npz") as got:
      assert_same_images(got["images"], images)
      assert_same_images(got["grid"], grid)


def test_no_captions_is_an_error_naming_them():
  with pytest.raises(ValueError, match="got no captions"):  # was a ZeroDivisionError
    generate_for_captions(None, None, None, None, [])


def test_one_str_or_an_array_of_str_are_captions(tmp_path):
  """generate_for_captions("a red circle") made 12 images, one per character of the caption."""
  _, tokenizer, models, state = _setup(tmp_path)
  one = generate_for_captions(models, state.ema_params, state.text_params, tokenizer,
                              "a red circle", seed=1)
  listed = generate_for_captions(models, state.ema_params, state.text_params, tokenizer,
                                 ["a red circle"], seed=1)
  assert one.shape == (1, 32, 32, 3)
  np.testing.assert_array_equal(one, listed)
  # A NumPy array of str (a DataFrame column's values) failed in `not captions`: "The truth
  # value of an array with more than one element is ambiguous".
  two = generate_for_captions(models, state.ema_params, state.text_params, tokenizer,
                              np.array(["a red circle", "a blue square"]), seed=1)
  assert two.shape == (2, 32, 32, 3)
  assert_same_images(two[:1], listed)


def test_a_caption_cut_to_the_run_s_max_length_names_training_as_the_fix(tmp_path, caplog):
  """The tokenizer's advice named load_tokenizer and TextGenerator.from_pretrained: evaluate.py's
  and the in-training evaluation's captions are cut as the run's training captions are, by
  config.text.max_length; only a run trained with a longer one reads them whole."""
  _, tokenizer, models, state = _setup(tmp_path)
  with caplog.at_level(logging.WARNING):
    generate_for_captions(models, state.ema_params, state.text_params, tokenizer,
                          ["a red circle", "a big red circle left of a small blue square"],
                          mesh=make_mesh(jax.devices()[:1]))
  assert [r.getMessage() for r in caplog.records] == [
      "Text #2 of 2 ('a big red circle left of a sma...', 45 tokens) is cut to max_length=32 "
      "tokens: the run reads config.text.max_length=32 tokens of a caption, as in training: a run "
      "trained with a larger one (train.py --config.text.max_length) keeps such captions whole."]


@pytest.mark.parametrize("seed, error", [(2**32, ValueError), (-1, ValueError), (2.5, TypeError)])
def test_a_seed_outside_uint32_or_not_an_int_is_refused(seed, error):
  """seed=2**32 generated seed 0's images (jax.random.PRNGKey keeps the low 32 bits), -1 those of
  2**32 - 1, under the seed given; 2.5 failed inside jax.random as 'got JitTracer'."""
  with pytest.raises(error, match=rf"seed={seed}"):
    generate_for_captions(None, None, None, None, ["a red circle"], seed=seed)
