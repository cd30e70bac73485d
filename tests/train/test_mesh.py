"""The XLA options of the programs on a mesh or the default device (mesh.compiler_options): the
train step's, every sampling program's and the evaluation's networks'."""
import jax
import numpy as np
import pytest

from llmimg_jax.eval import evaluator, generate, inception
from llmimg_jax.sample import sampler
from llmimg_jax.train import mesh as mesh_lib, samples
from tests.eval import inception_reference
from tests.eval.test_generate import _setup


def _probe(modules, monkeypatch) -> list:
  """Makes each module's compiler_options record its argument (the mesh, or none) and return an
  option that XLA refuses by name, so that the error shows a program compiled with it."""
  asked = []
  for module in modules:
    monkeypatch.setattr(module, "compiler_options", lambda *mesh: asked.append(mesh) or {
        "xla_llmimg_probe": "1"})
  return asked


def _compiles_with_the_probe(run) -> None:
  with pytest.raises(jax.errors.JaxRuntimeError, match="No such compile option: "
                     "'xla_llmimg_probe'"):
    run()


def test_every_sampling_program_compiles_with_the_mesh_s_options(tmp_path, monkeypatch):
  """sample.py, the loop's sample grids and the evaluations compiled the generator with XLA's
  defaults, whose YNNPACK convolutions made 64px sampling 17-25% slower on 2 cores than the train
  step's options (benchmarks/RESULTS.md)."""
  config, tokenizer, models, state = _setup(tmp_path)  # state replicated on 8 devices
  mesh = mesh_lib.make_mesh()
  assert mesh_lib.compiler_options(mesh)  # on CPU: YNNPACK for dots only
  asked = _probe((sampler, samples, generate), monkeypatch)
  prompts = ["a red circle"]
  programs = {
      "sample.py's Sampler": lambda: sampler.Sampler(
          models, tokenizer, state.ema_params, state.text_params, mesh=mesh)(prompts),
      "the loop's sample grid": lambda: samples.SampleWriter(
          models, tokenizer, config, tmp_path / "run", mesh).images(state),
      "an evaluation's images": lambda: generate.generate_for_captions(
          models, state.ema_params, state.text_params, tokenizer, prompts, mesh=mesh)}
  for name, run in programs.items():
    _compiles_with_the_probe(run)
    assert len(asked) == 1 and asked.pop()[0] is mesh, name


def test_the_evaluation_s_networks_compile_with_the_default_device_s_options(tmp_path,
                                                                          monkeypatch):
  """The shapes evaluator's training and reading and FID's InceptionV3 compiled with XLA's
  defaults: on 2 cores 19-20%, ~30% and ~50% slower (benchmarks/eval_options.py)."""
  assert mesh_lib.compiler_options()  # the default device, a CPU here
  asked = _probe((evaluator, inception), monkeypatch)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
  labels = {"present": np.ones((2, 9), np.int32)}  # [n, cells]
  labels.update({a: rng.integers(0, k, (2, 9)).astype(np.int32)
                 for a, k in evaluator.NUM_CLASSES.items()})
  net = evaluator.EvaluatorNet()
  params = jax.jit(net.init)(jax.random.PRNGKey(0), images[:1])["params"]
  weights = tmp_path / "inception.npz"
  np.savez(weights, **inception_reference.random_state_dict())
  programs = {
      "the evaluator's training": lambda: evaluator.train_net(
          images, labels, evaluator.TrainSettings(steps=1, batch_size=2)),
      "the evaluator's reading": lambda: evaluator.apply_batched(net, params, images),
      "Inception's features": lambda: inception.InceptionFeatures(str(weights))(images)}
  evaluator._read_cells_jitted.cache_clear()  # one jit per process, made at its first use
  try:
    for name, run in programs.items():
      _compiles_with_the_probe(run)
      assert asked == [()], name  # no mesh: the default device's
      asked.clear()
  finally:
    evaluator._read_cells_jitted.cache_clear()
