"""benchmarks/t5_bench: both sides generate exactly the requested number of tokens, even from
random weights that would emit EOS early."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from benchmarks import t5_bench, timing  # noqa: E402

# Random weights (torch seed 0, as bench_t5 sets) whose greedy output ends in EOS after 3-4 tokens
# in every row.
TINY = dict(t5_bench.T5_SMALL, vocab_size=3, d_model=8, d_kv=4, d_ff=16, num_layers=1,
            num_heads=2)
BATCH, LENGTH, NEW = 3, 6, 8


def test_generation_runs_the_requested_tokens_on_both_sides(monkeypatch):
  import jax.numpy as jnp
  from llmimg_jax.text import generate
  monkeypatch.setattr(t5_bench, "T5_SMALL", TINY)
  outputs = {}

  def run_once(fns, warmup, iters):  # what was timed, called once, with its result kept
    for name, fn in fns.items():
      outputs.setdefault(name, []).append(fn())
    return {name: {"median_s": 1.0} for name in fns}

  monkeypatch.setattr(timing, "alternate", run_once)
  loaded = []
  load_t5 = t5_bench.load_t5
  monkeypatch.setattr(t5_bench, "load_t5", lambda *a, **k: loaded.append(load_t5(*a, **k))
                      or loaded[-1])
  n = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    rows = t5_bench.bench_t5("float32", torch.device("cpu"), BATCH, LENGTH, NEW, warmup=0,
                             iters=1)
  finally:
    torch.set_num_threads(n)

  config, params = loaded[0]
  ids, mask = t5_bench.inputs(BATCH, LENGTH, config.vocab_size)
  free = np.asarray(generate(params, config, jnp.asarray(ids), jnp.asarray(mask),
                             max_new_tokens=NEW))
  eos = config.eos_token_id
  first_eos = np.where((free == eos).any(axis=1), (free == eos).argmax(axis=1), NEW)
  assert (first_eos < NEW - 1).all(), free  # unforced, every row would stop early
  (_, ours), (_, theirs) = outputs["jax"], outputs["torch"]  # [encoder, generation]
  ours, theirs = np.asarray(ours), theirs.cpu().numpy()
  assert ours.shape == theirs.shape == (BATCH, NEW)
  assert not (ours == eos).any() and not (theirs == eos).any(), (ours, theirs)
  np.testing.assert_array_equal(ours, theirs)
  assert rows[1]["name"] == f"T5 greedy gen (t5-small b{BATCH} L{LENGTH}, {NEW} new)"
  assert rows[1]["check"] == {"token_agreement": 1.0}
