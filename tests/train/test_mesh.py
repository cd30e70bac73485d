"""The XLA options of the programs on a mesh (mesh.compiler_options): the train step's, and every
sampling program's."""
import jax
import pytest

from llmimg_jax.eval import generate
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
