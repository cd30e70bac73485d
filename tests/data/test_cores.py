"""The cores a data build uses: cli.usable_cpus (the affinity mask, a container's CPU quota),
which sizes folder builds' decode threads and captioned_shapes' render processes."""
from __future__ import annotations

import pytest

from llmimg_jax import cli
from llmimg_jax.data import captioned_shapes, images


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "200000 100000\n"}, 2),  # cgroup v2: Docker --cpus=2
    ({"cpu.max": "150000 100000\n"}, 2),  # --cpus=1.5: rounded up
    ({"cpu.max": "50000 100000\n"}, 1),  # half a core: still one
    ({"cpu.max": "max 100000\n"}, 16),  # no quota
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 16),  # v1: none
    ({"cpu.max": "6400000 100000\n"}, 16),  # a quota above the cores: the cores
    ({}, 16),  # no cgroup files (not Linux, or not mounted)
])
def test_a_container_s_cpu_quota_bounds_the_usable_cores(tmp_path, monkeypatch, files, expected):
  """A 2-CPU pod on a 64-core host counted every core of its affinity mask: a folder build
  started 8 decode threads, captioned_shapes 8 render processes."""
  monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
  for name, text in files.items():
    (tmp_path / name).parent.mkdir(exist_ok=True)
    (tmp_path / name).write_text(text)
  assert cli.usable_cpus(tmp_path) == expected


def test_the_affinity_mask_bounds_the_usable_cores_under_a_larger_quota(tmp_path, monkeypatch):
  monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: {3}, raising=False)
  (tmp_path / "cpu.max").write_text("400000 100000\n")
  assert cli.usable_cpus(tmp_path) == 1


def test_captioned_shapes_renders_in_one_process_per_usable_core(tmp_path, monkeypatch):
  """default_num_proc counted os.cpu_count(): under taskset (or a quota) on a 64-core host a
  build spawned 8 render processes for 2 cores, where the folder build's decode threads
  (images._decode_threads) counted the usable ones."""
  monkeypatch.delenv("LLMIMG_DATA_NUM_PROC", raising=False)
  monkeypatch.setattr(cli.os, "cpu_count", lambda: 64)
  monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
  assert captioned_shapes.default_num_proc() == images._decode_threads() == 2
  monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
  monkeypatch.setattr(cli, "_cpu_quota", lambda root: None)
  assert captioned_shapes.default_num_proc() == images._decode_threads() == 8
