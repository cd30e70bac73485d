"""The cores this process may use: those it may run on, at most the CPU quota of its cgroup and
of every cgroup above it (Docker's --cpus, a Kubernetes CPU limit, systemd's CPUQuota=, a Slurm
job step's cores), where os.cpu_count() counts the host's."""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath


def usable_cpus(cgroup_root: str | os.PathLike = "/sys/fs/cgroup",
                proc_cgroup: str | os.PathLike = "/proc/self/cgroup",
                mountinfo: str | os.PathLike = "/proc/self/mountinfo") -> int:
  """The cores this process may run on (taskset, a cpuset), at most the smallest CPU quota,
  rounded up, along its cgroup's path (`proc_cgroup` names it) in the cgroup mounts `mountinfo`
  lists (else under `cgroup_root`)."""
  cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
           else os.cpu_count() or 1)
  quota = _cpu_quota(Path(cgroup_root), Path(proc_cgroup), Path(mountinfo))
  return min(cores, quota) if quota else cores


def _cpu_quota(root: Path, proc_cgroup: Path, mountinfo: Path) -> int | None:
  """The smallest ceil(quota / period) of the process's cgroup and those above it up to its
  mount: v2's cpu.max ("200000 100000"; "max 100000": none), v1's cpu.cfs_quota_us (-1: none)
  and cpu.cfs_period_us. None without a quota or where none can be read (not Linux). The mounts
  are those `mountinfo` lists (v1's cpu controller's: 'cpu,cpuacct', wherever it is), else
  `root` (v2) and root/cpu (v1), mounted at the cgroup root. A container sees its own cgroup at
  its mount ('0::/', or its path from the host's root where the mount's root is that path); a
  process in the host's namespace (a systemd unit, a Slurm job step) its path from the root."""
  v2, v1 = _cgroup_paths(proc_cgroup)
  mounts = _cgroup_mounts(mountinfo)
  v2_at, v2_root = mounts.get("v2", (root, "/"))
  v1_at, v1_root = mounts.get("v1", (root / "cpu", "/"))
  quotas = ([_v2_quota(folder) for folder in _up_to(v2_at, _below(v2, v2_root))]
            + [_v1_quota(folder) for folder in _up_to(v1_at, _below(v1, v1_root))])
  return min((q for q in quotas if q), default=None)


def _cgroup_mounts(mountinfo: Path) -> dict[str, tuple[Path, str]]:
  """The first cgroup v2 mount and v1 cpu controller mount `mountinfo` lists: {"v2"/"v1": (its
  mount point, the cgroup mounted there)}; none where it cannot be read."""
  try:  # a path's bytes as they are (a Latin-1 disk label's too), as os.fsdecode names them
    lines = os.fsdecode(mountinfo.read_bytes()).splitlines()
  except OSError:
    return {}
  mounts = {}
  for line in lines:  # ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER
    mount, _, filesystem = line.partition(" - ")
    fields, (fstype, _, options) = mount.split(), (filesystem.split() + ["", "", ""])[:3]
    if len(fields) >= 5 and (fstype == "cgroup2" or
                             fstype == "cgroup" and "cpu" in options.split(",")):
      root, point = (_unescape(field) for field in fields[3:5])
      mounts.setdefault("v2" if fstype == "cgroup2" else "v1", (Path(point), root))
  return mounts


def _unescape(field: str) -> str:
  """A mountinfo path: a space, tab, newline or backslash in it is written '\\040' and so on."""
  return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _below(path: str, mount_root: str) -> str:
  """The cgroup `path` (from the root) from where the cgroup `mount_root` is mounted; as it is if
  it is not below that one."""
  try:
    return "/" + str(PurePosixPath(path).relative_to(mount_root))
  except ValueError:
    return path


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
