"""cpus.usable_cpus: the affinity mask, at most the CPU quota of the process's cgroup and of the
cgroups above it, read under a fake cgroup root and a fake /proc/self/cgroup."""
from __future__ import annotations

import pytest

from llmimg_jax import cpus


def _cgroups(root, files):
  for name, text in files.items():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)


def _mountinfo(path, mounts):
  """Writes a /proc/self/mountinfo at `path` that lists `mounts`, (root, mount point, fstype,
  super options) each, among other mounts as a host's lists them; none if `mounts` is None."""
  if mounts is None:
    return path
  lines = ["22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw",
           "25 22 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw"]
  lines += [f"{30 + i} 25 0:{40 + i} {root} {point} rw,nosuid,nodev shared:{9 + i} - {fstype} "
            f"{fstype} {options}" for i, (root, point, fstype, options) in enumerate(mounts)]
  path.write_text("\n".join(lines) + "\n")
  return path


def _standard(fs):
  """cgroup v2 mounted at `fs` and v1's cpu controller at fs/cpu (where they are read without a
  mountinfo)."""
  return [("/", fs, "cgroup2", "rw,nsdelegate"), ("/", fs / "cpu", "cgroup", "rw,cpu,cpuacct")]


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
@pytest.mark.parametrize("mounts", [None, _standard])  # without a mountinfo, or listed in one
def test_a_container_s_cpu_quota_bounds_the_usable_cores(tmp_path, monkeypatch, files, expected,
                                                         proc, mounts):
  """A 2-CPU pod on a 64-core host counted every core of its affinity mask: a folder build
  started 8 decode threads, captioned_shapes 8 render processes."""
  monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
  _cgroups(tmp_path / "fs", files)
  proc_cgroup = tmp_path / "cgroup"
  if proc == "dir":
    proc_cgroup.mkdir()
  elif proc is not None:
    proc_cgroup.write_text(proc)
  mountinfo = _mountinfo(tmp_path / "mountinfo", mounts and mounts(tmp_path / "fs"))
  assert cpus.usable_cpus(tmp_path / "fs", proc_cgroup, mountinfo) == expected


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
@pytest.mark.parametrize("mounts", [None, _standard])
def test_the_quota_of_the_process_s_own_cgroup_and_those_above_it_bounds_the_cores(
    tmp_path, monkeypatch, proc, files, expected, mounts):
  """Only the cgroup mounted at /sys/fs/cgroup was read: a process under systemd's CPUQuota= or
  in a Slurm job step (the host's cgroup namespace, its own cgroup below the root) counted every
  core, and its decode threads and render processes oversubscribed its share."""
  monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
  _cgroups(tmp_path / "fs", files)
  (tmp_path / "cgroup").write_text(proc)
  mountinfo = _mountinfo(tmp_path / "mountinfo", mounts and mounts(tmp_path / "fs"))
  assert cpus.usable_cpus(tmp_path / "fs", tmp_path / "cgroup", mountinfo) == expected


def test_the_affinity_mask_bounds_the_usable_cores_under_a_larger_quota(tmp_path, monkeypatch):
  monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {3}, raising=False)
  (tmp_path / "cpu.max").write_text("400000 100000\n")
  (tmp_path / "cgroup").write_text("0::/\n")
  assert cpus.usable_cpus(tmp_path, tmp_path / "cgroup", tmp_path / "mountinfo") == 1


@pytest.mark.parametrize("proc, mounts, files, expected", [
    # a v1 cpu controller mounted as cpu,cpuacct, with no cpu link to it
    ("4:cpu,cpuacct:/\n", [("/", "cpu,cpuacct", "cgroup", "rw,cpu,cpuacct")],
     {"cpu,cpuacct/cpu.cfs_quota_us": "200000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 2),
    # elsewhere than under /sys/fs/cgroup (RHEL 6's /cgroup/cpu), its name escaped in mountinfo
    ("4:cpu:/\n", [("/", "cgroup v1/cpu", "cgroup", "rw,cpu")],
     {"cgroup v1/cpu/cpu.cfs_quota_us": "100000\n", "cgroup v1/cpu/cpu.cfs_period_us": "100000\n"},
     1),
    # a v1 container's process in a cgroup below the container's, its path named from the host's
    # root: the container's cgroup is mounted (as its root), the process's one below it
    ("4:cpu,cpuacct:/docker/0123abcd/worker\n",
     [("/docker/0123abcd", "cpu,cpuacct", "cgroup", "rw,cpu,cpuacct")],
     {"cpu,cpuacct/cpu.cfs_quota_us": "400000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
      "cpu,cpuacct/worker/cpu.cfs_quota_us": "100000\n",
      "cpu,cpuacct/worker/cpu.cfs_period_us": "100000\n"}, 1),
    # a v2 container in the host's cgroup namespace: its own cgroup is mounted, where a folder
    # named as the host's above it (a systemd inside it) is another cgroup
    ("0::/system.slice/docker-0123abcd.scope\n",
     [("/system.slice/docker-0123abcd.scope", "fs", "cgroup2", "rw")],
     {"fs/cpu.max": "300000 100000\n", "fs/system.slice/cpu.max": "100000 100000\n"}, 3),
], ids=["cpu_cpuacct", "elsewhere", "v1_container_below", "v2_host_namespace"])
def test_the_cgroup_mounts_are_found_in_mountinfo(tmp_path, monkeypatch, proc, mounts, files,
                                                  expected):
  """The cgroups were read at /sys/fs/cgroup (v2) and /sys/fs/cgroup/cpu (v1) only, along the
  process's path from the host's root: a cpu controller mounted as cpu,cpuacct without a cpu link,
  or elsewhere, went unread (every core counted), as did a cgroup below a v1 container's own."""
  monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
  _cgroups(tmp_path, files)
  (tmp_path / "cgroup").write_text(proc)
  mounts = [(root, str(tmp_path / point).replace(" ", "\\040"), fstype, options)  # as listed
            for root, point, fstype, options in mounts]
  mountinfo = _mountinfo(tmp_path / "mountinfo", mounts)
  assert cpus.usable_cpus(tmp_path / "fs", tmp_path / "cgroup", mountinfo) == expected


def test_a_mount_point_that_is_not_utf8_leaves_the_cgroup_mounts_found(tmp_path, monkeypatch):
  """mountinfo holds a mount point's bytes as they are (only a space, tab, newline and backslash
  escaped): one not UTF-8 (a Latin-1 disk label) failed the whole file's decoding, and a cpu
  controller mounted as cpu,cpuacct went unread (every core counted)."""
  monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
  _cgroups(tmp_path, {"cpu,cpuacct/cpu.cfs_quota_us": "200000\n",
                      "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
  (tmp_path / "cgroup").write_text("4:cpu,cpuacct:/\n")
  (tmp_path / "mountinfo").write_bytes(
      b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
      b"26 22 8:17 / /media/\xe9t\xe9 rw,nosuid shared:8 - vfat /dev/sdb1 rw\n"
      + f"30 22 0:40 / {tmp_path / 'cpu,cpuacct'} rw,nosuid shared:9 - cgroup cgroup "
        "rw,cpu,cpuacct\n".encode())
  assert cpus.usable_cpus(tmp_path / "fs", tmp_path / "cgroup", tmp_path / "mountinfo") == 2
