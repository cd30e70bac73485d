"""The XLA options of the programs on a mesh (mesh.compiler_options): the train step's, every
sampling program's and the shapes evaluator's training."""
import jax
import numpy as np
import pytest

from llmimg_jax.eval import evaluator, generate
from llmimg_jax.sample import sampler
from llmimg_jax.train import mesh as mesh_lib, samples
from tests.eval.test_generate import _setup


def test_every_sampling_program_compiles_with_the_mesh_s_options(tmp_path, monkeypatch):
  """sample.py, the loop's sample grids and the evaluations compiled the generator with XLA's
  defaults, whose YNNPACK convolutions made 64px sampling 17-25% slower on 2 cores than the train
  step's options (benchmarks/RESULTS.md)."""
  config, tokenizer, models, state = _setup(tmp_path)  # state replicated on 8 devices
  mesh = mesh_lib.make_mesh()
  assert mesh_lib.compiler_options(mesh)  # on CPU: YNNPACK for dots only
  asked = []

  def probe(mesh):  # an option XLA refuses by name: the error shows that a program asked for it
    asked.append(mesh)
    return {"xla_llmimg_probe": "1"}
  for module in (sampler, samples, generate):
    monkeypatch.setattr(module, "compiler_options", probe)
  prompts = ["a red circle"]
  programs = {
      "sample.py's Sampler": lambda: sampler.Sampler(
          models, tokenizer, state.ema_params, state.text_params, mesh=mesh)(prompts),
      "the loop's sample grid": lambda: samples.SampleWriter(
          models, tokenizer, config, tmp_path / "run", mesh).images(state),
      "an evaluation's images": lambda: generate.generate_for_captions(
          models, state.ema_params, state.text_params, tokenizer, prompts, mesh=mesh)}
  for name, run in programs.items():
    with pytest.raises(jax.errors.JaxRuntimeError, match="No such compile option: "
                       "'xla_llmimg_probe'"):
      run()
    assert asked.pop() is mesh and not asked, name


def test_the_shapes_evaluator_trains_with_the_default_device_s_options(monkeypatch):
  """Its training step compiled with XLA's defaults: 19-20% slower per step on 2 cores."""
  assert mesh_lib.compiler_options()  # the default device, a CPU here
  asked = []
  monkeypatch.setattr(evaluator, "compiler_options", lambda *mesh: asked.append(mesh) or {
      "xla_llmimg_probe": "1"})
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
  labels = {"present": np.ones((2, 9), np.int32)}  # [n, cells]
  labels.update({a: rng.integers(0, k, (2, 9)).astype(np.int32)
                 for a, k in evaluator.NUM_CLASSES.items()})
  with pytest.raises(jax.errors.JaxRuntimeError, match="No such compile option: "
                     "'xla_llmimg_probe'"):
    evaluator.train_net(images, labels, evaluator.TrainSettings(steps=1, batch_size=2))
  assert asked == [()]  # no mesh: the default device's
