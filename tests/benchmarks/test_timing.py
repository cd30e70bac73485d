"""benchmarks/timing.xla_flops: XLA's FLOP count of the program that runs, also for a backend whose
own count misses library calls (there: the same function compiled for the CPU, from shapes)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")  # benchmarks.timing imports it

from benchmarks import timing  # noqa: E402


def test_flops_of_a_matmul_on_cpu_and_from_shapes_elsewhere(monkeypatch):
  fn = lambda a, b: jnp.tanh(a) @ b  # noqa: E731
  a, b = jnp.ones((64, 32)), jnp.ones((32, 16))
  compiled = jax.jit(fn).lower(a, b).compile()
  flops = timing.xla_flops(compiled, fn, a, b)
  assert flops >= 2 * 64 * 32 * 16 and flops < 2 * 64 * 32 * 16 + 64 * 32 * 16  # + the tanh
  # On another backend: recompiled for the CPU from shapes, so donated (deleted) args are fine.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  donated = jax.jit(lambda x: x + 1, donate_argnums=0)
  a_gone = jnp.ones((64, 32))
  donated(a_gone)
  assert timing.xla_flops(None, fn, a_gone, np.ones((32, 16), np.float32)) == flops


def test_alternate_warms_up_reverses_order_and_takes_medians(monkeypatch):
  """Warm-up calls are not timed, rounds alternate ab / ba, and one slow call moves the median
  less than the mean. The calls take their seconds on a clock that only they advance: on the
  wall clock a loaded machine made a sleep(0) call take 10-40 ms now and then."""
  import time
  import types
  now = [0.0]
  monkeypatch.setattr(timing, "time", types.SimpleNamespace(
      perf_counter=lambda: now[0], process_time=time.process_time))
  calls, delays = [], {"a": [0.3, 0.0, 0.0, 0.0, 0.0], "b": [0.0, 0.0, 0.0, 0.0, 0.05]}

  def fn(name):
    def call():
      now[0] += delays[name][sum(c == name for c in calls)]
      calls.append(name)
    return call
  result = timing.alternate({"a": fn("a"), "b": fn("b")}, warmup=1, iters=4)
  assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
  assert result["a"]["n"] == result["b"]["n"] == 4
  assert result["a"]["median_s"] == 0.0  # the 0.3 s first call was the warm-up
  assert result["b"]["median_s"] == 0.0 and result["b"]["min_s"] == 0.0  # one 0.05 s outlier


def test_table_speedup_is_torch_over_jax():
  from benchmarks import run
  t = lambda s: {"median_s": s, "cpu_median_s": 2 * s, "min_s": s}  # noqa: E731
  row = {"name": "step", "jax": t(1.0), "torch": t(2.0), "torch_compile": t(4.0), "items": 32,
         "unit": "img", "flops": 1e11}
  line = run.table([row], peak=1e12).splitlines()[-1]
  assert line.split()[1:8] == ["1000.0", "2000.0", "4000.0", "2.00x", "2.00x", "4.00x", "32.0"]
  assert line.split()[-2:] == ["10.0%", "5.0%"]  # MFU: 1e11 FLOP in 1 s (2 s) of a 1e12 peak


def test_machine_info_records_the_cores_this_process_may_use(monkeypatch):
  """Under taskset or a container's cpuset torch gets the usable cores, not os.cpu_count(): the
  JSON's machine record and run.py's header name them (a 2-of-64-core run read as 64 cores)."""
  monkeypatch.setattr(timing.os, "sched_getaffinity", lambda pid: {3}, raising=False)
  monkeypatch.setattr(timing.os, "cpu_count", lambda: 64)
  info = timing.machine_info(timing.torch.device("cpu"))
  assert (info["cpu_count"], info["usable_cpus"]) == (64, 1)


def test_machine_info_names_the_cpu_by_family_and_model(tmp_path):
  """A VM's model name is often generic ('Intel(R) Xeon(R) Processor' was two different CPUs
  here): the record holds vendor, family, model and the vector ISA of the first processor."""
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text(
      "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 207\n"
      "model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx2 avx512f avx512_vnni\n\n"
      "processor\t: 1\nvendor_id\t: OtherVendor\ncpu family\t: 25\nmodel\t\t: 17\n")
  fields = timing._cpuinfo(str(cpuinfo))
  assert timing._cpu_model(fields) == "Intel(R) Xeon(R) Processor"
  assert timing._cpu_id(fields) == "GenuineIntel family 6 model 207, avx2 avx512f"
  assert timing._cpu_id({"cpu family": "25", "model": "17", "flags": "sse2"}).endswith(
      "family 25 model 17, no avx2")
  assert timing._cpuinfo(str(tmp_path / "missing")) == {}


def test_run_writes_its_json_into_a_folder_that_does_not_exist_yet(monkeypatch, tmp_path):
  """--json NEW_DIR/out.json raised FileNotFoundError at the end, after the whole benchmark."""
  import json
  import sys
  from benchmarks import run
  monkeypatch.setattr(timing, "peak_matmul_flops", lambda *a, **k: {
      "peak_flops_per_s": 1e9, "jax_flops_per_s": 1e9, "torch_flops_per_s": 1e9, "n": 8})
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # run.main sets it for --device cpu: restored after
  out = tmp_path / "new" / "out.json"
  monkeypatch.setattr(sys, "argv", ["run.py", "--skip-gan", "--skip-t5", "--no-reuse-host-memory",
                                    "--torch-threads", str(timing.torch.get_num_threads()),
                                    "--json", str(out)])
  run.main()
  assert json.loads(out.read_text())["results"] == []
