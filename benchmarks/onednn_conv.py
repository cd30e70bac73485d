"""The train step with every convolution through oneDNN (an XLA FFI call) against XLA's own, on
CPU. An experiment, not used by the package: the result is in benchmarks/RESULTS.md.

  pip install onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0   # + g++
  python benchmarks/onednn_conv.py --check            # values and 2nd-order gradients vs XLA
  python benchmarks/onednn_conv.py --bench 64         # alternating step A/B, as step_options.py

benchmarks/onednn_conv.cc is compiled on first use (into --build_dir). Each convolution, its
input gradient and its kernel gradient is one call (custom VJPs that call each other, so MA-GP's
second derivatives are oneDNN calls too). With the patch on, `layers.conv2d`/`conv3x3`, G's
upsample convs and D's strided convs all go to oneDNN: XLA:CPU's workarounds are bypassed.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import timing  # noqa: E402
from benchmarks.profile_step import models_and_batch, parse_args_reusing_host_memory  # noqa: E402
from llmimg_jax import cli  # noqa: E402
from llmimg_jax.gan import discriminator, generator, layers  # noqa: E402
from llmimg_jax.gan.common import SUPPORTED_RESOLUTIONS  # noqa: E402
from llmimg_jax.train import loop  # noqa: E402
from llmimg_jax.train.mesh import compiler_options, make_mesh  # noqa: E402
from llmimg_jax.train.step import train_step  # noqa: E402

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onednn_conv.cc")
_TARGET = "llmimg_onednn_conv"
_FORWARD, _INPUT_GRAD, _KERNEL_GRAD = 0, 1, 2


def build_and_register(build_dir: str) -> None:
  """Compiles onednn_conv.cc against this environment's oneDNN and jaxlib's FFI headers (once
  per source and jax version) and registers the handler with XLA."""
  prefix = sysconfig.get_paths()["data"]  # where the onednn wheels put include/ and lib/
  if not os.path.exists(os.path.join(prefix, "include", "oneapi", "dnnl", "dnnl.hpp")):
    sys.exit(f"oneDNN headers not found under {prefix}/include: "
             "pip install onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0")
  with open(_SOURCE, "rb") as f:
    digest = hashlib.sha256(f.read() + jax.__version__.encode()).hexdigest()[:12]
  library = os.path.join(build_dir, f"onednn_conv_{digest}.so")
  if not os.path.exists(library):
    if shutil.which("g++") is None:
      sys.exit("g++ not found: it compiles onednn_conv.cc (Debian: apt install g++)")
    os.makedirs(build_dir, exist_ok=True)
    partial = f"{library}.{os.getpid()}.tmp"
    lib_dir = os.path.join(prefix, "lib")
    subprocess.run(["g++", "-O2", "-std=c++17", "-shared", "-fPIC", "-fopenmp", _SOURCE,
                    "-o", partial, f"-isystem{jax.ffi.include_dir()}", f"-I{prefix}/include",
                    f"-L{lib_dir}", "-ldnnl", f"-Wl,-rpath,{lib_dir}"], check=True)
    os.replace(partial, library)
  handler = ctypes.cdll.LoadLibrary(library).OnednnConv
  jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(handler), platform="cpu")


def _call(kind: int, a: jax.Array, b: jax.Array, out_shape: tuple[int, ...], strides, pads):
  (pad_t, pad_b), (pad_l, pad_r) = pads
  ints = dict(kind=kind, stride_h=strides[0], stride_w=strides[1], pad_t=pad_t, pad_b=pad_b,
              pad_l=pad_l, pad_r=pad_r)
  return jax.ffi.ffi_call(_TARGET, jax.ShapeDtypeStruct(out_shape, jnp.float32))(
      a, b, **{k: np.int64(v) for k, v in ints.items()})


def _output_shape(x_shape, w_shape, strides, pads) -> tuple[int, ...]:
  (kh, kw), out = w_shape[:2], w_shape[3]
  return (x_shape[0], (x_shape[1] + sum(pads[0]) - kh) // strides[0] + 1,
          (x_shape[2] + sum(pads[1]) - kw) // strides[1] + 1, out)


# conv(x, w), its input gradient conv_input_grad(dy, w) and kernel gradient
# conv_kernel_grad(x, dy) are each linear in both arguments, and each one's VJP is the other two.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x: jax.Array, w: jax.Array, strides, pads) -> jax.Array:
  """x [b, h, w, in] (NHWC), w [kh, kw, in, out] (HWIO); pads ((top, bottom), (left, right))."""
  return _call(_FORWARD, x, w, _output_shape(x.shape, w.shape, strides, pads), strides, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_input_grad(dy: jax.Array, w: jax.Array, x_shape, strides, pads) -> jax.Array:
  return _call(_INPUT_GRAD, dy, w, x_shape, strides, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_kernel_grad(x: jax.Array, dy: jax.Array, w_shape, strides, pads) -> jax.Array:
  return _call(_KERNEL_GRAD, x, dy, w_shape, strides, pads)


conv.defvjp(lambda x, w, s, p: (conv(x, w, s, p), (x, w)),
            lambda s, p, res, g: (conv_input_grad(g, res[1], res[0].shape, s, p),
                                  conv_kernel_grad(res[0], g, res[1].shape, s, p)))
conv_input_grad.defvjp(
    lambda dy, w, xs, s, p: (conv_input_grad(dy, w, xs, s, p), (dy, w)),
    lambda xs, s, p, res, c: (conv(c, res[1], s, p),
                              conv_kernel_grad(c, res[0], res[1].shape, s, p)))
conv_kernel_grad.defvjp(
    lambda x, dy, ws, s, p: (conv_kernel_grad(x, dy, ws, s, p), (x, dy)),
    lambda ws, s, p, res, c: (conv_input_grad(res[1], c, res[0].shape, s, p),
                              conv(res[0], c, s, p)))


def conv2d(x: jax.Array, kernel: jax.Array, padding="SAME", strides=(1, 1)) -> jax.Array:
  """layers.conv2d through oneDNN."""
  if padding == "SAME":
    pads = tuple(((k - 1) // 2, k // 2) for k in kernel.shape[:2])
  else:
    pads = ((0, 0), (0, 0)) if padding == "VALID" else tuple(map(tuple, padding))
  return conv(x, kernel, tuple(strides), pads)


@contextlib.contextmanager
def onednn_convs():
  """While tracing: every conv of G and D through oneDNN (the XLA:CPU forms bypassed)."""
  patches = {(layers, "conv2d"): conv2d, (generator, "conv2d"): conv2d,
             (discriminator, "conv2d"): conv2d, (layers, "conv3x3"): conv2d,
             (discriminator, "conv4x4_stride2"):
                 lambda x, k: conv2d(x, k, ((1, 1), (1, 1)), (2, 2))}
  old = {key: getattr(*key) for key in patches}
  for (module, name), fn in patches.items():
    setattr(module, name, fn)
  try:
    yield
  finally:
    for (module, name), fn in old.items():
      setattr(module, name, fn)


def check() -> None:
  """oneDNN's values, gradients and MA-GP-style second derivatives against XLA's conv."""
  rng = np.random.default_rng(0)
  for n, size, cin, cout, k, stride, padding in [
      (2, 8, 3, 5, 3, 1, "SAME"), (2, 8, 4, 6, 4, 2, ((1, 1), (1, 1))),
      (3, 8, 5, 7, 2, 1, ((1, 1), (1, 1))), (2, 9, 4, 6, 2, 1, "VALID")]:
    x = jnp.asarray(rng.normal(size=(n, size, size, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, cin, cout)), jnp.float32)

    def loss(conv_fn, x, w):
      f = lambda x_: conv_fn(x_, w, padding, (stride, stride))  # noqa: E731
      gx = jax.grad(lambda x_: jnp.sum(jnp.sin(f(x_))))(x)
      return jnp.sum(gx ** 2) + jnp.sum(jnp.cos(f(x)))

    ours = (conv2d(x, w, padding, (stride, stride)),
            *jax.grad(functools.partial(loss, conv2d), (0, 1))(x, w))
    ref = (layers.conv2d(x, w, padding, (stride, stride)),
           *jax.grad(functools.partial(loss, layers.conv2d), (0, 1))(x, w))
    errors = [float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip(ours, ref)]
    print(f"x {x.shape} w {w.shape} stride {stride} {padding}: relative error of y, d/dx, d/dw "
          f"of an MA-GP-style loss {', '.join(f'{e:.1e}' for e in errors)}")
    if max(errors) > 1e-5:
      sys.exit("oneDNN's convolution disagrees with XLA's")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true", help="compare with XLA's conv and exit")
  parser.add_argument("--bench", type=int, default=64, choices=SUPPORTED_RESOLUTIONS,
                      metavar="RES")
  parser.add_argument("--rounds", type=cli.at_least(1), default=10)
  parser.add_argument("--build_dir", default=os.path.expanduser("~/.cache/llmimg_jax"))
  args = parse_args_reusing_host_memory(parser)
  build_and_register(args.build_dir)
  if args.check:
    return check()
  cfg, models, batch = models_and_batch(args.bench)
  mesh = make_mesh(jax.devices()[:1])
  holders, fns = {}, {}
  for name, patch in [("xla", contextlib.nullcontext), ("onednn", onednn_convs)]:
    holder = holders[name] = {"state": loop.create_state(models, mesh, cfg.seed)}
    t0 = time.perf_counter()
    with patch():
      step = functools.partial(train_step, models, batch_chunks=loop.batch_chunks(mesh))
      compiled = jax.jit(step, donate_argnums=0, compiler_options=compiler_options(mesh)
                         ).lower(holder["state"], batch).compile()
    print(f"{name}: compile {time.perf_counter() - t0:.1f} s", flush=True)

    def call(compiled=compiled, holder=holder):
      holder["state"], holder["metrics"] = compiled(holder["state"], batch)
      jax.block_until_ready(holder["state"])

    fns[name] = call
  for name, t in timing.alternate(fns, warmup=2, iters=args.rounds).items():
    print(f"{name:8s} median {t['median_s'] * 1e3:7.1f} ms  min {t['min_s'] * 1e3:7.1f} ms  "
          f"d_loss after the last step {float(holders[name]['metrics']['d_loss']):.6f}")
  print(f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  with cli.ends_on_signal("benchmarks/onednn_conv.py",
                          "the benchmark did not finish: rerun the command."):
    main()
