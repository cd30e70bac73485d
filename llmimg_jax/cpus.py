"""The cores this process may use: those it may run on, at most the CPU quota of its cgroup and
of every cgroup above it (Docker's --cpus, a Kubernetes CPU limit, systemd's CPUQuota=, a Slurm
job step's cores), where os.cpu_count() counts the host's."""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath


def usable_cpus(cgroup_root: str | os.PathLike = "/sys/fs/cgroup",
                proc_cgroup: str | os.PathLike = "/proc/self/cgroup") -> int:
  """The cores this process may run on (taskset, a cpuset), at most the smallest CPU quota,
  rounded up, along its cgroup's path under `cgroup_root` (`proc_cgroup` names that path)."""
  cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
           else os.cpu_count() or 1)
  quota = _cpu_quota(Path(cgroup_root), Path(proc_cgroup))
  return min(cores, quota) if quota else cores


def _cpu_quota(root: Path, proc_cgroup: Path) -> int | None:
  """The smallest ceil(quota / period) of the process's cgroup and those above it up to `root`:
  v2's cpu.max ("200000 100000"; "max 100000": none) under `root`, v1's cpu.cfs_quota_us (-1:
  none) and cpu.cfs_period_us under root/cpu. None without a quota or where none can be read (not
  Linux). A container sees its own cgroup at `root` ('0::/'); a process in the host's namespace
  (a systemd unit, a Slurm job step) sees its path from the host's root."""
  v2, v1 = _cgroup_paths(proc_cgroup)
  quotas = ([_v2_quota(folder) for folder in _up_to(root, v2)]
            + [_v1_quota(folder) for folder in _up_to(root / "cpu", v1)])
  return min((q for q in quotas if q), default=None)


def _cgroup_paths(proc_cgroup: Path) -> tuple[str, str]:
  """The process's v2 cgroup (the '0::/path' line) and v1 cpu cgroup ('4:cpu,cpuacct:/path') as
  `proc_cgroup` names them; '/' for one it does not name or where it cannot be read."""
  v2 = v1 = "/"
  try:
    lines = proc_cgroup.read_text().splitlines()
  except (OSError, UnicodeDecodeError):
    return v2, v1
  for line in lines:
    hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
    if hierarchy == "0" and not controllers:
      v2 = path
    elif "cpu" in controllers.split(","):
      v1 = path
  return v2, v1


def _up_to(root: Path, path: str) -> list[Path]:
  """root/path and each folder above it, `root` last. Those that are not there hold no quota: a
  v1 container has its own cgroup at `root` but its path named from the host's root. A path
  outside the cgroup namespace ('/../..': moved out of the container's cgroup) gives `root`."""
  parts = PurePosixPath(path).parts[1:]
  if ".." in parts:
    parts = ()
  return [root.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _v2_quota(folder: Path) -> int | None:
  try:
    quota, period = (folder / "cpu.max").read_text().split()
  except (OSError, ValueError):
    return None
  return _ceil(quota, period)


def _v1_quota(folder: Path) -> int | None:
  try:
    quota, period = ((folder / name).read_text().strip()
                     for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
  except OSError:
    return None
  return _ceil(quota, period)


def _ceil(quota: str, period: str) -> int | None:
  """ceil(quota / period) in whole cores; None for no quota ("max", -1) or an unreadable one."""
  try:
    quota_us, period_us = int(quota), int(period)
  except ValueError:  # "max"
    return None
  return -(-quota_us // period_us) if quota_us > 0 and period_us > 0 else None
