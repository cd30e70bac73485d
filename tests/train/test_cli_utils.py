"""cli_utils' helpers for train.py subprocesses: the coordinator's port stays free until used."""
import shutil
import subprocess
import sys

import pytest

from tests.train.cli_utils import env

# In a network namespace of its own (no other process's ports, the ephemeral range narrowed to
# 20 ports): a neighbour's listeners on port 0 (another test's gloo or coordinator) take the ten
# odd ports the kernel hands out first for port 0, then the coordinator starts on _free_port's.
_NEIGHBOURS_THEN_COORDINATOR = """
import socket, subprocess
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
  f.write("40000 40019")
from tests.train.cli_utils import _free_port
port = _free_port()
taken = [socket.socket() for _ in range(10)]
for s in taken:
  s.bind(("", 0))
  s.listen()
print("coordinator port", port, "neighbours", sorted(s.getsockname()[1] for s in taken),
      flush=True)
import jax
jax.distributed.initialize(f"127.0.0.1:{port}", 1, 0, initialization_timeout=60)
jax.distributed.shutdown()
print("started", flush=True)
"""


def test_the_coordinator_s_port_is_given_to_no_other_bind_before_it_starts():
  if not shutil.which("unshare") or subprocess.run(
      ["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True).returncode:
    pytest.skip("needs `unshare -n` (root, Linux) and `ip` for a network namespace of its own")
  proc = subprocess.run(["unshare", "-n", sys.executable, "-c", _NEIGHBOURS_THEN_COORDINATOR],
                        env=env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and "started" in proc.stdout, proc.stdout + proc.stderr[-3000:]
