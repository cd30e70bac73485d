"""Times jitted GAN forward+backward passes on the local CPU and counts params and FLOPs.

  python benchmarks/gan_step_cpu.py                  # default sizes
  python benchmarks/gan_step_cpu.py --nf 16 --batch 32 --iters 5

Per size it reports:
  G fwd+bwd      grad of mean(G(z, text)) w.r.t. G params (the generator alone)
  G step         grad of the G hinge loss through DiffAugment and D, w.r.t. G params
  D fwd+bwd      grad of the D hinge loss (real, fake, mismatched) w.r.t. D params, no penalty
  D step + MA-GP the same plus DF-GAN's MA-GP (a second-order gradient)
FLOPs are XLA's `cost_analysis()` of the compiled function (per call, whole batch).
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp

from llmimg_jax import gan


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def _time(fn, args, iters: int) -> tuple[float, float, float, float]:
  """-> (wall s/step, process CPU s/step, compile s, FLOPs/step). On a shared machine the CPU
  time (all threads) is the steadier number; wall ~ CPU / cores when the cores are free."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))  # warm-up
  t0, c0 = time.perf_counter(), time.process_time()
  for _ in range(iters):
    jax.block_until_ready(compiled(*args))
  wall = (time.perf_counter() - t0) / iters
  return wall, (time.process_time() - c0) / iters, compile_s, _flops(compiled)


def bench(resolution: int, nf: int, batch: int, text_dim: int, length: int, iters: int,
          attn: tuple[int, ...], policy: str) -> None:
  g = gan.Generator(resolution, nf=nf, attn_resolutions=attn)
  d = gan.Discriminator(resolution, nf=nf)
  ks = jax.random.split(jax.random.key(0), 8)
  z = jax.random.normal(ks[0], (batch, g.z_dim))
  words = jax.random.normal(ks[1], (batch, length, text_dim))
  mask = (jnp.arange(length)[None, :] < jax.random.randint(ks[2], (batch, 1), 4, length + 1))
  mask = mask.astype(jnp.int32)
  sent = gan.sentence_embedding(words, mask)
  real = jax.random.uniform(ks[3], (batch, resolution, resolution, 3), minval=-1, maxval=1)
  g_params = jax.jit(g.init)(ks[4], z, sent, words, mask)["params"]
  d_params = jax.jit(d.init)(ks[5], real, sent)["params"]
  fake = g.apply({"params": g_params}, z, sent, words, mask)

  def d_apply(p, *a, method):
    return d.apply({"params": p}, *a, method=getattr(d, method))

  def g_fwd_bwd(gp):
    return jax.grad(lambda p: jnp.mean(g.apply({"params": p}, z, sent, words, mask)))(gp)

  def g_step(gp, dp, key):
    def loss(p):
      x = gan.diff_augment(g.apply({"params": p}, z, sent, words, mask), key, policy)
      return gan.g_hinge_loss(d_apply(dp, d_apply(dp, x, method="features"), sent,
                                      method="logits"))
    return jax.grad(loss)(gp)

  def d_loss(dp, key, with_gp):
    k1, k2 = jax.random.split(key)
    real_aug = gan.diff_augment(real, k1, policy)
    feats_real = d_apply(dp, real_aug, method="features")
    feats_fake = d_apply(dp, gan.diff_augment(fake, k2, policy), method="features")
    loss = gan.d_hinge_loss(d_apply(dp, feats_real, sent, method="logits"),
                            d_apply(dp, feats_fake, sent, method="logits"),
                            d_apply(dp, feats_real, gan.mismatched(sent), method="logits"))
    if with_gp:
      def logits_fn(x, s):
        return d_apply(dp, d_apply(dp, x, method="features"), s, method="logits")
      loss = loss + gan.ma_gp(logits_fn, real_aug, sent)
    return loss

  def d_fwd_bwd(dp, key):
    return jax.grad(lambda p: d_loss(p, key, False))(dp)

  def d_step(dp, key):
    return jax.grad(lambda p: d_loss(p, key, True))(dp)

  key = ks[6]
  print(f"\n== {resolution}px nf={nf} batch={batch} text_dim={text_dim} L={length} "
        f"attn={attn} policy={policy!r}")
  print(f"params: G {_count(g_params) / 1e6:.3f}M  D {_count(d_params) / 1e6:.3f}M")
  for name, fn, args in [("G fwd+bwd", g_fwd_bwd, (g_params,)),
                         ("G step (G+aug+D)", g_step, (g_params, d_params, key)),
                         ("D fwd+bwd", d_fwd_bwd, (d_params, key)),
                         ("D step + MA-GP", d_step, (d_params, key))]:
    wall, cpu, compile_s, flops = _time(fn, args, iters)
    print(f"{name:18s} wall {wall * 1e3:7.0f} ms  cpu {cpu * 1e3:7.0f} ms/step  "
          f"{flops / 1e9:6.2f} GFLOP  (compile {compile_s:.1f} s)", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--resolution", type=int, default=32)
  parser.add_argument("--nf", type=int, nargs="+", default=[32, 16])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--text-dim", type=int, default=64)
  parser.add_argument("--length", type=int, default=32)
  parser.add_argument("--attn", type=int, nargs="*", default=[16])
  parser.add_argument("--policy", default="color,translation,cutout")
  parser.add_argument("--iters", type=int, default=5)
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs, "
        f"loadavg {os.getloadavg()[0]:.2f} (other processes inflate wall times)")
  for nf in args.nf:
    bench(args.resolution, nf, args.batch, args.text_dim, args.length, args.iters,
          tuple(args.attn), args.policy)


if __name__ == "__main__":
  main()
