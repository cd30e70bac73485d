"""cpus.usable_cpus: the affinity mask, at most the CPU quota of the process's cgroup and of the
cgroups above it, read under a fake cgroup root and a fake /proc/self/cgroup."""
from __future__ import annotations

import pytest

from llmimg_jax import cpus


def _cgroups(root, files):
  for name, text in files.items():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)


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
@pytest.mark.parametrize("proc", [None, "0::/\n", "dir"])  # not there, a container's, unreadable
def test_a_container_s_cpu_quota_bounds_the_usable_cores(tmp_path, monkeypatch, files, expected,
                                                         proc):
  """A 2-CPU pod on a 64-core host counted every core of its affinity mask: a folder build
  started 8 decode threads, captioned_shapes 8 render processes."""
  monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
  _cgroups(tmp_path / "fs", files)
  proc_cgroup = tmp_path / "cgroup"
  if proc == "dir":
    proc_cgroup.mkdir()
  elif proc is not None:
    proc_cgroup.write_text(proc)
  assert cpus.usable_cpus(tmp_path / "fs", proc_cgroup) == expected


_SLURM_V1 = {"cpu/slurm/uid_1000/job_7/cpu.cfs_quota_us": "300000\n",
             "cpu/slurm/uid_1000/job_7/cpu.cfs_period_us": "100000\n",
             "cpu/slurm/uid_1000/job_7/step_0/cpu.cfs_quota_us": "-1\n",
             "cpu/slurm/uid_1000/job_7/step_0/cpu.cfs_period_us": "100000\n",
             "cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}


@pytest.mark.parametrize("proc, files, expected", [
    # systemd CPUQuota=200% on a bare process (the host's cgroup namespace, cgroup v2)
    ("0::/system.slice/train.service\n",
     {"system.slice/train.service/cpu.max": "200000 100000\n",
      "system.slice/cpu.max": "max 100000\n"}, 2),
    # a parent's quota bounds a larger one below it
    ("0::/user.slice/user-1000.slice/session-2.scope\n",
     {"user.slice/cpu.max": "100000 100000\n",
      "user.slice/user-1000.slice/session-2.scope/cpu.max": "400000 100000\n"}, 1),
    # a Slurm job step under cgroup v1: the job's quota, two levels up, bounds the step
    ("12:memory:/slurm/uid_1000/job_7/step_0\n4:cpu,cpuacct:/slurm/uid_1000/job_7/step_0\n",
     _SLURM_V1, 3),
    # the same machine's hybrid layout (v2 mounted beside v1, without the cpu controller)
    ("4:cpu,cpuacct:/slurm/uid_1000/job_7/step_0\n0::/slurm/uid_1000/job_7/step_0\n",
     _SLURM_V1, 3),
    # a v1 container mounts its own cgroup at the root, named from the host's root
    ("4:cpu,cpuacct:/docker/0123abcd\n",
     {"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2),
    # moved out of the cgroup namespace's root: that root's quota
    ("0::/../../system.slice\n", {"cpu.max": "300000 100000\n"}, 3),
    # another controller's path is not the cpu controller's
    ("5:memory:/slurm/uid_1000/job_7\n", _SLURM_V1, 16),
], ids=["systemd_v2", "a_parent_s_quota", "slurm_v1", "hybrid", "docker_v1", "outside_namespace",
        "another_controller"])
def test_the_quota_of_the_process_s_own_cgroup_and_those_above_it_bounds_the_cores(
    tmp_path, monkeypatch, proc, files, expected):
  """Only the cgroup mounted at /sys/fs/cgroup was read: a process under systemd's CPUQuota= or
  in a Slurm job step (the host's cgroup namespace, its own cgroup below the root) counted every
  core, and its decode threads and render processes oversubscribed its share."""
  monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
  _cgroups(tmp_path / "fs", files)
  (tmp_path / "cgroup").write_text(proc)
  assert cpus.usable_cpus(tmp_path / "fs", tmp_path / "cgroup") == expected


def test_the_affinity_mask_bounds_the_usable_cores_under_a_larger_quota(tmp_path, monkeypatch):
  monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {3}, raising=False)
  (tmp_path / "cpu.max").write_text("400000 100000\n")
  (tmp_path / "cgroup").write_text("0::/\n")
  assert cpus.usable_cpus(tmp_path, tmp_path / "cgroup") == 1
