"""The cores a data build uses: cpus.usable_cpus (the affinity mask, the CPU quotas of its
cgroups: tests/test_cpus.py), which sizes folder builds' decode threads and captioned_shapes'
render processes."""
from __future__ import annotations

from llmimg_jax import cpus
from llmimg_jax.data import captioned_shapes, images


def test_captioned_shapes_renders_in_one_process_per_usable_core(tmp_path, monkeypatch):
  """default_num_proc counted os.cpu_count(): under taskset (or a quota) on a 64-core host a
  build spawned 8 render processes for 2 cores, where the folder build's decode threads
  (images._decode_threads) counted the usable ones."""
  monkeypatch.delenv("LLMIMG_DATA_NUM_PROC", raising=False)
  monkeypatch.setattr(cpus.os, "cpu_count", lambda: 64)
  monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
  assert captioned_shapes.default_num_proc() == images._decode_threads() == 2
  monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
  monkeypatch.setattr(cpus, "_cpu_quota", lambda root, proc_cgroup, mountinfo: None)
  assert captioned_shapes.default_num_proc() == images._decode_threads() == 8
