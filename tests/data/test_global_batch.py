"""Global batches: each host's numpy batch as one `jax.Array` sharded over the data axis."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.data.utils import run_with_workers


def test_to_global_batch_over_a_4_device_mesh():
  script = textwrap.dedent("""
      import jax, numpy as np
      from jax.sharding import Mesh
      from llmimg_jax.data.global_batch import to_global_batch
      mesh = Mesh(np.array(jax.devices()), ("data",))
      batch = {"image": np.arange(8 * 2 * 2 * 3, dtype=np.uint8).reshape(8, 2, 2, 3),
               "input_ids": np.arange(8 * 5, dtype=np.int32).reshape(8, 5),
               "index": np.arange(8, dtype=np.int64), "caption": np.array(["x"] * 8)}
      out = to_global_batch(batch, mesh)
      assert set(out) == {"image", "input_ids"}, out.keys()
      assert set(to_global_batch(batch, mesh, keys=None)) == {"image", "input_ids", "index"}
      assert out["image"].shape == (8, 2, 2, 3) and len(out["image"].addressable_shards) == 4
      assert all(s.data.shape == (2, 5) for s in out["input_ids"].addressable_shards)
      np.testing.assert_array_equal(np.asarray(out["input_ids"]), batch["input_ids"])
      print("OK", len(jax.devices()))
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "OK 4" in result.stdout


def test_to_global_batch_refuses_64_bit_integers_that_32_bits_would_change():
  """Without jax_enable_x64 JAX keeps integers in 32 bits: an index past 2**31 would wrap."""
  import jax
  from llmimg_jax.data.global_batch import to_global_batch
  mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  small = to_global_batch({"index": np.array([0, 2**31 - 1], np.int64)}, mesh, keys=None)
  np.testing.assert_array_equal(np.asarray(small["index"]), [0, 2**31 - 1])
  with pytest.raises(ValueError, match=r"batch\['index'\] holds 64-bit integers .*2147483648"
                                       r".*jax_enable_x64"):
    to_global_batch({"index": np.array([1, 2**31], np.int64)}, mesh, keys=None)


def test_batches_of_grain_workers_are_not_reported_leaked_after_to_global_batch(shapes_cfg):
  """The arrays of a batch grain's workers hand over live in shared memory; once passed to
  to_global_batch, JAX kept the last batch's alive past close_iterator, and every train.py run
  with data.num_workers > 0 ended with "There appear to be 3 leaked shared_memory objects"."""
  result = run_with_workers(shapes_cfg, """
      from llmimg_jax.data.global_batch import to_global_batch
      mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
      for _ in range(2):  # as the training loop
        batch = to_global_batch(next(it), mesh)
        jax.block_until_ready(batch)
      del batch
      pipeline.close_iterator(it)
      print("OK", flush=True)
  """, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
  assert "leaked shared_memory" not in result.stderr, result.stderr[-3000:]
