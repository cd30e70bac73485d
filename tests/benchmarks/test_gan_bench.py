"""benchmarks/gan_bench.bench_gan times what it says: both frameworks' steps and sampling on a
batch of the requested size, each timed JAX call returning only once its outputs are computed."""

import jax
import jax.numpy as jnp
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from benchmarks import gan_bench, timing, torch_train  # noqa: E402
from llmimg_jax.train import loop  # noqa: E402

BATCH = 3  # none of the defaults (config 32, benchmarks/run.py's)


def _slow(x: jax.Array) -> jax.Array:
  """~0.2 s of matmuls depending on x: a result dispatched asynchronously is not ready for a
  while after the call returns."""
  m = jnp.full((384, 384), 1e-3, jnp.float32) + 0 * jnp.mean(x.astype(jnp.float32))
  return jax.lax.fori_loop(0, 200, lambda i, a: jnp.tanh(a @ a), m)


def test_bench_gan_times_the_requested_batch_until_its_results_are_ready(monkeypatch):
  seen = {}  # batch sizes each side was given

  # Stand-ins for the compiled step and sampler (compiling the real ones takes ~a minute here),
  # slow enough that an unblocked call returns before its outputs exist.
  def jit_train_step(models, mesh):
    def step(state, batch):
      seen["jax_step"] = batch["image"].shape[0]
      return state, {"d_loss": _slow(batch["image"]).sum()}
    return jax.jit(step)

  def generate_images(models, g_params, text_params, z, input_ids, mask):
    seen["jax_sample"] = (z.shape[0], input_ids.shape[0])
    return jnp.zeros((z.shape[0], 8, 8, 3), jnp.uint8) + _slow(z)[0, :3].astype(jnp.uint8)

  make_config = gan_bench.make_config

  def small_text(*args):  # the real config, with a smaller text encoder (faster to build and run)
    cfg = make_config(*args)
    cfg.text.update(d_model=32, d_ff=32, num_layers=1, num_heads=2, d_kv=16, max_length=12)
    return cfg

  monkeypatch.setattr(gan_bench, "make_config", small_text)
  monkeypatch.setattr(loop, "jit_train_step", jit_train_step)
  monkeypatch.setattr(gan_bench, "generate_images", generate_images)
  for name in ("train_step", "generate_images"):  # the PyTorch twin's, run for real
    real = getattr(torch_train, name)
    def recorded(m, *args, _real=real, _name=name):
      seen[f"torch_{_name}"] = args[0]["image"].shape[0] if _name == "train_step" else tuple(
          a.shape[0] for a in args)
      return _real(m, *args)
    monkeypatch.setattr(torch_train, name, recorded)

  outputs = []  # every compiled JAX call's result
  call = jax.stages.Compiled.__call__
  monkeypatch.setattr(jax.stages.Compiled, "__call__",
                      lambda self, *a, **k: outputs.append(call(self, *a, **k)) or outputs[-1])
  ready = {}

  def run_once(fns, warmup, iters):  # each timed function once; were its results ready at return?
    for name, fn in fns.items():
      outputs.clear()
      fn()
      ready.setdefault(name, []).append(
          [leaf.is_ready() for leaf in jax.tree.leaves(outputs)] if name == "jax" else None)
    return {name: {"median_s": 1.0} for name in fns}

  monkeypatch.setattr(timing, "alternate", run_once)
  n = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    step_row, sample_row = gan_bench.bench_gan(32, BATCH, 8, "float32", torch.device("cpu"),
                                               warmup=0, iters=1, with_compile=False)
  finally:
    torch.set_num_threads(n)

  assert seen == {"jax_step": BATCH, "torch_train_step": BATCH, "jax_sample": (BATCH, BATCH),
                  "torch_generate_images": (BATCH, BATCH, BATCH)}
  assert step_row["items"] == sample_row["items"] == BATCH
  assert step_row["name"] == f"GAN train step (32px b{BATCH} nf8)"
  step_ready, sample_ready = ready["jax"]
  assert step_ready and all(step_ready), step_ready  # the new state and the metrics
  assert sample_ready == [True], sample_ready
