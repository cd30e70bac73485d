"""Timing helpers for benchmarks/run.py: alternating medians, peak matmul FLOP/s, machine info."""
from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch

# The cores torch's threads and the JAX step's batch chunks (loop.batch_chunks) follow.
from llmimg_jax.cpus import usable_cpus


def alternate(fns: dict[str, Callable[[], object]], warmup: int, iters: int
              ) -> dict[str, dict[str, float]]:
  """Runs every fn `warmup` times, then `iters` rounds of one call each, the order reversed every
  other round; each fn must block until its work is done. -> per name: median/min wall seconds,
  median process CPU seconds (all threads) and median minor page faults (process) per call."""
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  wall: dict[str, list[float]] = {k: [] for k in fns}
  cpu: dict[str, list[float]] = {k: [] for k in fns}
  faults: dict[str, list[float]] = {k: [] for k in fns}
  names = list(fns)
  for i in range(iters):
    for name in (names if i % 2 == 0 else names[::-1]):
      t0, c0 = time.perf_counter(), time.process_time()
      f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      fns[name]()
      wall[name].append(time.perf_counter() - t0)
      cpu[name].append(time.process_time() - c0)
      faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
  return {k: {"median_s": statistics.median(wall[k]), "min_s": min(wall[k]),
              "cpu_median_s": statistics.median(cpu[k]), "n": len(wall[k]),
              "page_faults_median": statistics.median(faults[k])} for k in fns}


def xla_flops(compiled, fn: Callable, *args) -> float | None:
  """FLOPs per call of `fn(*args)` from XLA's cost analysis of the optimised program (duplicate
  work merged; None if unavailable): `compiled`'s on CPU; on another backend, that of `fn` compiled
  for the CPU, since there the compiled program's convolutions and matmuls are cuDNN/cuBLAS calls
  whose FLOPs XLA's count misses (an H200 64px step counted 39.8 GFLOP against 227.8 on CPU) and
  the count before optimisation is not available (None through the PJRT C API)."""
  try:
    if jax.default_backend() != "cpu":  # shapes only (args may be donated), placed on a CPU
      cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
      cpu_args = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu), args)
      compiled = jax.jit(fn).lower(*cpu_args).compile()
    cost = compiled.cost_analysis()
  except Exception:  # some backends do not implement it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = cost.get("flops") if cost else None
  return float(flops) if flops and flops > 0 else None


def torch_sync(device: torch.device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def peak_matmul_flops(dtype: str, torch_device: torch.device, n: int, iters: int = 7
                      ) -> dict[str, float]:
  """Best n x n x n matmul FLOP/s in `dtype` (fastest of `iters` calls), by JAX and by torch;
  'peak' is the larger of the two."""
  jdt = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
  tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), jnp.float32).astype(jdt)
  b = jax.random.normal(kb, (n, n), jnp.float32).astype(jdt)
  mm = jax.jit(jnp.matmul)
  ta = torch.randn(n, n, device=torch_device).to(tdt)
  tb = torch.randn(n, n, device=torch_device).to(tdt)

  def jax_mm():
    mm(a, b).block_until_ready()

  def torch_mm():
    torch.mm(ta, tb)
    torch_sync(torch_device)

  t = alternate({"jax": jax_mm, "torch": torch_mm}, warmup=2, iters=iters)
  flops = 2.0 * n**3
  out = {f"{k}_flops_per_s": flops / v["min_s"] for k, v in t.items()}
  out["peak_flops_per_s"] = max(out.values())
  out["n"] = n
  return out


# The instruction sets that decide the matmul and conv kernels both sides pick (cpu_id below).
_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def _cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, str]:
  """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
  fields = {}
  try:
    with open(path) as f:
      for line in f:
        if not line.strip():
          break  # the first processor's block ends
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
  except OSError:
    pass
  return fields


def _cpu_model(cpuinfo: dict[str, str]) -> str:
  return cpuinfo.get("model name") or platform.processor() or "unknown"


def _cpu_id(cpuinfo: dict[str, str]) -> str:
  """e.g. 'GenuineIntel family 6 model 207, avx2 avx512f': a VM's model name is often generic
  ('Intel(R) Xeon(R) Processor'), its family and model tell the CPU apart."""
  if "cpu family" not in cpuinfo:
    return platform.machine() or "unknown"
  flags = set(cpuinfo.get("flags", "").split())
  isa = " ".join(f for f in _ISA_FLAGS if f in flags) or "no avx2"
  return (f"{cpuinfo.get('vendor_id', '?')} family {cpuinfo['cpu family']} model "
          f"{cpuinfo.get('model', '?')}, {isa}")


def machine_info(torch_device: torch.device) -> dict[str, object]:
  import flax
  import transformers
  dev = jax.devices()[0]
  cpuinfo = _cpuinfo()
  info = {
      "cpu_model": _cpu_model(cpuinfo), "cpu_id": _cpu_id(cpuinfo), "cpu_count": os.cpu_count(),
      "usable_cpus": usable_cpus(),
      "loadavg_start": os.getloadavg(), "platform": platform.platform(),
      "python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
      "torch": torch.__version__, "transformers": transformers.__version__,
      "numpy": np.__version__, "jax_device": f"{dev.platform}: {dev.device_kind}",
      "torch_device": str(torch_device), "torch_num_threads": torch.get_num_threads(),
      "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
      "XLA_FLAGS": os.environ.get("XLA_FLAGS", "(unset)"),
  }
  if torch_device.type == "cuda":
    info["torch_device_name"] = torch.cuda.get_device_name(torch_device)
    info["torch_tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32,
                          "cudnn": torch.backends.cudnn.allow_tf32}
    info["jax_default_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
  return info
