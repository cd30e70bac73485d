"""Side-by-side benchmark: llmimg_jax (JAX) vs the same models in PyTorch, in one process.

  python benchmarks/run.py --quick                      # < 5 min on a 2-core CPU: 32px + T5
  python benchmarks/run.py --json out.json              # 32px and 64px, plus torch.compile
  python benchmarks/run.py --device gpu --dtype bfloat16 --json gpu_bf16.json

Every benchmark warms up both frameworks, then alternates them call by call (order reversed
every other round) and reports medians. speedup = PyTorch time / JAX time (> 1: JAX is faster).
cpu-time = the same ratio of process CPU seconds per call (steadier when other processes share
the cores). MFU = XLA cost-analysis FLOPs of the JAX program / time / the measured peak matmul
FLOP/s (the faster of JAX's and torch's best n x n matmul in the same dtype); the PyTorch column
uses the same (our) FLOP count: the same function, though the twin's upsample convolutions take
more FLOPs for it (RESULTS.md).

On CPU torch uses every usable core with libgomp's default wait policy (--omp-passive for a shared
machine, see main). The
process calls llmimg_jax.train.host_memory.reuse_host_memory() as train.py does (on CPU both sides
run with its allocator settings; --no-reuse-host-memory skips it).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time


# gan.common.SUPPORTED_RESOLUTIONS (tests/benchmarks keep them equal), not imported: that imports
# JAX, which must load after main sets JAX_PLATFORMS.
RESOLUTIONS = (32, 64, 128, 256)


def _parse() -> argparse.Namespace:
  from llmimg_jax import cli  # pylint: disable=g-import-not-at-top  (no jax: JAX_PLATFORMS first)
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="32px + T5, fewer iterations (< 5 min)")
  p.add_argument("--json", default=None, help="write results and machine info here (a new file, "
                 "refused up front if it exists, unless --overwrite; a link is written through "
                 "to its target)")
  p.add_argument("--overwrite", action="store_true", help="let --json replace an existing file")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
  p.add_argument("--resolutions", type=int, nargs="+", default=None, choices=RESOLUTIONS,
                 help="default: 32 with --quick, else 32 64")
  p.add_argument("--batch", type=cli.at_least(1), default=32)
  p.add_argument("--nf", type=cli.at_least(1), default=32)
  p.add_argument("--warmup", type=int, default=None, help="default: 1 quick, 3 full")
  p.add_argument("--iters", type=int, default=None, help="default: 5 quick, 10 full")
  p.add_argument("--compile", dest="compile", action="store_true", default=None,
                 help="also time torch.compile (default: on, off with --quick)")
  p.add_argument("--no-compile", dest="compile", action="store_false")
  p.add_argument("--torch-threads", type=cli.at_least(0), default=0,
                 help="default: the cores this process may use (cpus.usable_cpus)")
  p.add_argument("--omp-passive", dest="omp_passive", action="store_true",
                 help="OMP_WAIT_POLICY=PASSIVE for torch on a CPU shared with other processes")
  p.add_argument("--no-tf32", action="store_true",
                 help="GPU fp32: full-precision matmuls/convs on both sides (default: TF32 on "
                      "both, which is JAX's default; torch's default is TF32 for convs only)")
  p.add_argument("--render", default=None, metavar="JSON",
                 help="only print the table of an earlier run's --json file")
  p.add_argument("--no-reuse-host-memory", action="store_true",
                 help="skip llmimg_jax.train.host_memory.reuse_host_memory (which train.py calls)")
  p.add_argument("--skip-gan", action="store_true")
  p.add_argument("--skip-t5", action="store_true")
  p.add_argument("--t5-batch", type=cli.at_least(1), default=8)
  p.add_argument("--t5-length", type=cli.at_least(1), default=64)
  p.add_argument("--t5-new-tokens", type=cli.at_least(1), default=32)
  a = p.parse_args()
  # '' read as not given: --json "$OUT" with OUT unset wrote nothing after the whole run, and
  # --render '' ran one; ' ' wrote a file named ' '.
  for flag, value in (("--json", a.json), ("--render", a.render)):
    if value is not None and not value.strip():
      p.error(cli.blank_flag(flag, "OUT", "name a .json file"))
  for flag, value, least, what in (("--iters", a.iters, 1, "timed calls"),
                                   ("--warmup", a.warmup, 0, "untimed calls first")):
    if value is not None and value < least:
      p.error(f"{flag} {value}: give {least} or more ({what} per model).")
  # Now, not after minutes of benchmarking: an earlier run's results were silently replaced, a
  # folder that cannot be written lost them.
  from llmimg_jax import output_files  # the checks of every output flag of the package's
  try:
    if a.json is not None:  # '~/x.json' after '=', which no shell expands: as the path flags
      a.json = output_files.expand_output(a.json, "--json")
      output_files.check_output_file(a.json, "--json", a.overwrite, "a .json file")
  except (OSError, ValueError) as e:  # ValueError: a ~user that is no one's
    p.error(str(e))
  if a.overwrite and a.json is None:
    p.error("--overwrite only applies to --json (it lets that replace an existing file).")
  if a.render is not None and a.json is not None:  # it would write nothing
    p.error("--render only prints the table of an earlier run's --json file; drop --json.")
  a.resolutions = a.resolutions or ([32] if a.quick else [32, 64])
  a.warmup = a.warmup if a.warmup is not None else (1 if a.quick else 3)
  a.iters = a.iters if a.iters is not None else (5 if a.quick else 10)
  a.compile = (not a.quick) if a.compile is None else a.compile
  return a


def _ms(t: dict | None) -> str:
  return "-" if t is None else f"{t['median_s'] * 1e3:9.1f}"


def _mfu(flops: float | None, t: dict | None, peak: float) -> str:
  return "-" if flops is None or t is None else f"{100 * flops / t['median_s'] / peak:5.1f}%"


def table(rows: list[dict], peak: float) -> str:
  head = (f"{'benchmark':44s} {'JAX ms':>9s} {'torch ms':>9s} {'compile ms':>10s} "
          f"{'speedup':>8s} {'cpu-time':>8s} {'vs comp.':>8s} {'JAX rate':>12s} {'GFLOP':>7s} "
          f"{'MFU JAX':>8s} {'MFU torch':>9s}")
  lines = [head, "-" * len(head)]
  for r in rows:
    j, t, c = r["jax"], r["torch"], r.get("torch_compile")
    vs_c = f"{c['median_s'] / j['median_s']:7.2f}x" if c else "-"
    gflop = f"{r['flops'] / 1e9:7.1f}" if r.get("flops") else "-"
    lines.append(
        f"{r['name']:44s} {_ms(j)} {_ms(t)} {_ms(c):>10s} "
        f"{t['median_s'] / j['median_s']:7.2f}x {t['cpu_median_s'] / j['cpu_median_s']:7.2f}x "
        f"{vs_c:>8s} "
        f"{r['items'] / j['median_s']:6.1f} {r['unit'] + '/s':>5s} {gflop:>7s} "
        f"{_mfu(r.get('flops'), j, peak):>8s} {_mfu(r.get('flops'), t, peak):>9s}")
  return "\n".join(lines)


def summary(rows: list[dict], peak: float) -> str:
  lines = [table(rows, peak)]
  for r in rows:
    if r.get("compile_note"):
      lines.append(f"torch.compile, {r['name']}: {r['compile_note']}")
    if r.get("check"):
      lines.append(f"check, {r['name']}: {r['check']}")
  return "\n".join(lines)


def write_json(path: str, results: dict, overwrite: bool = False) -> None:
  """`results` written to --json's `path` minutes after its check (output_files.write_results:
  kept in a spare file if that fails); exit status 1 naming where they are."""
  from llmimg_jax import output_files  # pylint: disable=g-import-not-at-top
  try:
    output_files.write_results(path, json.dumps(results, indent=1), f"--json {path!r}",
                               overwrite, "while the benchmarks ran", "run_*.json")
  except OSError as e:
    sys.exit(f"benchmarks/run.py: error: {e}")
  print(f"wrote {path}")


def main() -> None:
  args = _parse()
  if args.render is not None:
    try:  # ValueError: not JSON; ZeroDivisionError: a time or peak of 0
      with open(args.render) as f:
        saved = json.load(f)
      text = summary(saved["results"], saved["peak_matmul"]["peak_flops_per_s"])
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as e:
      why = f"no {e} in it" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
      sys.exit(f"benchmarks/run.py: error: --render {args.render!r}: {why}; name a --json "
               "file that run.py wrote.")
    print(text)
    return
  if args.device == "cpu":
    os.environ["JAX_PLATFORMS"] = "cpu"
    # libgomp's default (spin, then sleep) is what users get and the fastest on a quiet machine:
    # the 32px twin step 380-414 ms against 531-858 ms with PASSIVE (session 19). On a machine
    # shared with other processes spinning threads make PyTorch 5-10x slower (G forward 0.2 s ->
    # 1-1.9 s at load 7): --omp-passive there. Set before torch loads libgomp.
    if args.omp_passive:
      os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

  import jax
  try:
    import torch
  except ImportError as e:  # the test extra, never a runtime dependency
    raise SystemExit(
        f"benchmarks/run.py: error: it times our models against PyTorch twins and needs torch "
        f"({e}); install it: .venv/bin/pip install torch==2.13.0 (on plain PyPI add "
        "--extra-index-url https://download.pytorch.org/whl/cpu for the CPU build).") from None

  from benchmarks import timing
  from llmimg_jax.train.host_memory import reuse_host_memory

  # As train.py: on CPU the step's scratch memory stays mapped between calls. Process-wide, so
  # the PyTorch side gets the same allocator settings (none on a GPU: the result is False).
  reuse_memory = not args.no_reuse_host_memory and reuse_host_memory()

  if args.device == "gpu" and jax.devices()[0].platform != "gpu":
    raise SystemExit(f"--device gpu but JAX sees {jax.devices()}; install jax[cuda] or use "
                     "--device cpu.")
  device = torch.device("cuda" if args.device == "gpu" else "cpu")
  if device.type == "cuda" and not torch.cuda.is_available():
    raise SystemExit("--device gpu but torch.cuda.is_available() is False.")
  torch.set_num_threads(args.torch_threads or timing.usable_cpus())  # the cores JAX's chunks use
  if device.type == "cuda":  # the same fp32 matmul/conv precision on both sides
    torch.backends.cudnn.benchmark = True  # fixed shapes: tuned in warm-up, as XLA tunes compiling
    torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
    torch.backends.cudnn.allow_tf32 = not args.no_tf32
    if args.no_tf32:
      jax.config.update("jax_default_matmul_precision", "highest")
  t_start = time.perf_counter()
  info = timing.machine_info(device)
  info["reuse_host_memory"] = reuse_memory
  print(f"{info['cpu_model']} ({info['cpu_id']}) x{info['cpu_count']} "
        f"({info['usable_cpus']} usable) | "
        f"load {info['loadavg_start']} | "
        f"jax {info['jax']} ({info['jax_device']}) | torch {info['torch']} on {device} "
        f"({info['torch_num_threads']} threads) | dtype {args.dtype}", flush=True)
  peak = timing.peak_matmul_flops(args.dtype, device, 8192 if device.type == "cuda" else 2048)
  print(f"peak matmul: {peak['peak_flops_per_s'] / 1e9:.1f} GFLOP/s "
        f"(jax {peak['jax_flops_per_s'] / 1e9:.1f}, torch {peak['torch_flops_per_s'] / 1e9:.1f})",
        flush=True)

  rows = []
  if not args.skip_gan:
    from benchmarks import gan_bench
    for res in args.resolutions:
      rows += gan_bench.bench_gan(res, args.batch, args.nf, args.dtype, device, args.warmup,
                                  args.iters, args.compile)
      print(table(rows[-2:], peak["peak_flops_per_s"]), flush=True)
  if not args.skip_t5:
    from benchmarks import t5_bench
    rows += t5_bench.bench_t5(args.dtype, device, args.t5_batch, args.t5_length,
                              args.t5_new_tokens, args.warmup, args.iters)
  info["loadavg_end"] = os.getloadavg()
  info["wall_s"] = time.perf_counter() - t_start
  print(f"\n== results ({args.dtype}, {device}; medians of {args.iters} alternating calls after "
        f"{args.warmup} warm-up; speedup = torch / JAX; load {info['loadavg_start'][0]:.1f} -> "
        f"{info['loadavg_end'][0]:.1f}; {info['wall_s']:.0f} s)")
  print(summary(rows, peak["peak_flops_per_s"]))
  if args.json is not None:
    write_json(args.json, {"args": vars(args), "machine": info, "peak_matmul": peak,
                           "results": rows}, args.overwrite)


if __name__ == "__main__":
  from llmimg_jax import cli  # pylint: disable=g-import-not-at-top  (no jax: JAX_PLATFORMS first)
  with cli.ends_on_signal("benchmarks/run.py", "the benchmarks did not finish (the tables "
                          "printed so far hold what was measured): rerun the command."):
    main()
