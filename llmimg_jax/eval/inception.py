"""The FID InceptionV3 (pytorch-fid's network, the one DF-GAN reports FID with) in Flax linen.

Weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (a torch state dict of the
TensorFlow FID Inception), given by path; nothing is downloaded. Loading a .pth needs torch
(imported lazily: torch is for tests, benchmarks; never a runtime dependency), so convert it once:

  python -m llmimg_jax.eval.inception pt_inception-2015-12-05-6726825d.pth inception_fid.npz

and pass the .npz anywhere a weights path is taken (either file works where torch is installed).
Each conv + batch norm pair is folded into one conv with a bias at load time.
"""
from __future__ import annotations

import io
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llmimg_jax import cli, output_files
from llmimg_jax.eval import fid
from llmimg_jax.train.mesh import compiler_options

WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")
BN_EPS = 1e-3  # torchvision BasicConv2d


class BasicConv(nn.Module):
  features: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    pad = ((self.padding[0],) * 2, (self.padding[1],) * 2)
    return nn.relu(nn.Conv(self.features, self.kernel, (self.stride,) * 2, pad,
                           precision=jax.lax.Precision.HIGHEST, name="conv")(x))


def _avg3(x):  # TF's average pool: padded zeros are not counted
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max3s2(x):
  return nn.max_pool(x, (3, 3), (2, 2))


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg3(x))
    return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
    bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max3s2(x)], -1)


class InceptionC(nn.Module):
  c7: int

  @nn.compact
  def __call__(self, x):
    c7, h, w = self.c7, ((1, 7), (0, 3)), ((7, 1), (3, 0))
    b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv(c7, h[0], padding=h[1], name="branch7x7_2")(b7)
    b7 = BasicConv(192, w[0], padding=w[1], name="branch7x7_3")(b7)
    bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv(c7, w[0], padding=w[1], name="branch7x7dbl_2")(bd)
    bd = BasicConv(c7, h[0], padding=h[1], name="branch7x7dbl_3")(bd)
    bd = BasicConv(c7, w[0], padding=w[1], name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, h[0], padding=h[1], name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, (1, 1), name="branch_pool")(_avg3(x))
    return jnp.concatenate([b1, b7, bd, bp], -1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max3s2(x)], -1)


class InceptionE(nn.Module):
  max_pool: bool  # FIDInceptionE_2 max-pools where E_1 average-pools (a quirk of the TF graph)

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], -1)
    bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], -1)
    pooled = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1))) if self.max_pool else _avg3(x)
    bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], -1)


def resize_bilinear(x: jax.Array, size: int) -> jax.Array:
  """torch F.interpolate(mode='bilinear', align_corners=False, antialias=False) on [b, h, w, c]."""
  b, h, w, c = x.shape
  scale = jnp.array([size / h, size / w], jnp.float32)
  return jax.image.scale_and_translate(x, (b, size, size, c), (1, 2), scale,
                                       jnp.zeros(2, jnp.float32), "linear", antialias=False)


class FIDInceptionV3(nn.Module):
  """Images in [0, 1] [b, h, w, 3] -> 2048-d pool features [b, 2048] (pytorch-fid block 3)."""
  resize_input: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    if self.resize_input:
      x = resize_bilinear(x, 299)  # [b, 299, 299, 3]
    x = 2.0 * x - 1.0
    x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max3s2(x)
    x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max3s2(x)
    for name, pool in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = InceptionA(pool, name=name)(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(False, name="Mixed_7b")(x)
    x = InceptionE(True, name="Mixed_7c")(x)
    return x.mean((1, 2))  # [b, 2048]


def _read_state_dict(path: str) -> dict[str, np.ndarray]:
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"No Inception weights at {path}. Download pytorch-fid's FID Inception weights from "
        f"{WEIGHTS_URL} and pass their path (or the .npz made from them by "
        "`python -m llmimg_jax.eval.inception WEIGHTS.pth OUT.npz`).")
  if os.path.isdir(path):  # torch's error would say "not a readable state dict; download again"
    raise ValueError(f"{path} is a folder; name the weights file itself "
                     "(pt_inception-2015-12-05-6726825d.pth, or the .npz made from it).")
  if path.lower().endswith(".npz"):
    return fid.read_npz(path, "pass pytorch-fid's weights (.pth) or convert them again: "
                        f"python -m llmimg_jax.eval.inception WEIGHTS.pth {path} --overwrite")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"Reading {path} (a torch state dict) needs torch, which is not installed. Install it "
        "(pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu) or convert "
        "the file once where torch is installed: python -m llmimg_jax.eval.inception "
        f"{path} inception_fid.npz") from e
  try:  # a damaged or foreign file fails inside pickle with e.g. KeyError or UnpicklingError
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.detach().cpu().numpy() for k, v in state.items()}
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise ValueError(
        f"{path} is not a readable torch state dict ({type(e).__name__}: "
        f"{' '.join(str(e).split())[:200]}); download pytorch-fid's FID Inception weights again "
        f"from {WEIGHTS_URL}.") from e


_FIX = (f"pass pytorch-fid's FID Inception weights ({WEIGHTS_URL}) or the .npz converted from "
        "them (python -m llmimg_jax.eval.inception WEIGHTS.pth OUT.npz).")


def params_from_state_dict(state: dict[str, np.ndarray], source: str = "The state dict") -> dict:
  """Flax params of FIDInceptionV3 from a state dict in pytorch-fid's layout, BN folded in.
  A ValueError, naming `source` and the fix, for a state dict of another layout or with a
  layer's entry missing."""
  params: dict = {}
  prefixes = sorted({k[:-len(".conv.weight")] for k in state if k.endswith(".conv.weight")})
  if not prefixes:
    raise ValueError(f"{source} has no '*.conv.weight' entries (keys like {sorted(state)[:3]}): "
                     f"not pytorch-fid's Inception layout; {_FIX}")
  if missing := sorted(f"{prefix}.bn.{k}" for prefix in prefixes
                       for k in ("weight", "bias", "running_mean", "running_var")
                       if f"{prefix}.bn.{k}" not in state):
    raise ValueError(f"{source} is missing entries of pytorch-fid's Inception layout "
                     f"({len(missing)}, e.g. {missing[0]!r}): a partial or foreign state dict; "
                     f"{_FIX}")
  for prefix in prefixes:
    w = np.asarray(state[f"{prefix}.conv.weight"], np.float64)  # [out, in, kh, kw]
    gamma, beta = (np.asarray(state[f"{prefix}.bn.{k}"], np.float64) for k in ("weight", "bias"))
    mean, var = (np.asarray(state[f"{prefix}.bn.running_{k}"], np.float64) for k in ("mean", "var"))
    scale = gamma / np.sqrt(var + BN_EPS)
    node = params
    for part in prefix.split("."):
      node = node.setdefault(part, {})
    node["conv"] = {"kernel": np.float32(w.transpose(2, 3, 1, 0) * scale),  # [kh, kw, in, out]
                    "bias": np.float32(beta - mean * scale)}
  return params


def _checked_params(state: dict[str, np.ndarray], path: str) -> dict:
  params = params_from_state_dict(state, source=path)
  # Shapes only: no arrays made, nor a device started (the converter runs without one).
  expected = jax.eval_shape(lambda: FIDInceptionV3().init(
      jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3))))["params"]
  if jax.tree.map(lambda a: a.shape, params) != jax.tree.map(lambda a: a.shape, expected):
    raise ValueError(f"{path} does not hold the FID InceptionV3 (pytorch-fid layout): its "
                     f"layers or shapes differ from the network's; {_FIX}")
  # torchvision's ImageNet inception_v3 has the same layers, and another network's features: its
  # classifier has 1000 classes, the FID network's (TF's 2015 Inception) 1008.
  if "fc.weight" in state and np.shape(state["fc.weight"])[0] != 1008:
    raise ValueError(f"{path} holds an Inception of {np.shape(state['fc.weight'])[0]} classes "
                     "(torchvision's ImageNet inception_v3 has 1000), not the FID network of "
                     f"1008, whose features every published FID uses; {_FIX}")
  return params


def load_params(path: str | os.PathLike) -> dict:
  return _checked_params(_read_state_dict(os.fspath(path)), os.fspath(path))


class InceptionFeatures:
  """Batched, jitted 2048-d features of uint8 images [n, h, w, 3] (resized to 299 bilinearly)."""
  dim = 2048

  def __init__(self, weights: str | os.PathLike, batch_size: int = 50):
    cli.check_batch_size(batch_size)  # before the weights load
    self.params = jax.device_put(load_params(weights))
    # What results record: which weights their FIDs are of.
    self.source = {"path": str(weights), "sha256": fid.file_sha256(weights)}
    self.batch_size = batch_size
    self._apply = jax.jit(FIDInceptionV3().apply, compiler_options=compiler_options())

  def __call__(self, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise ValueError(f"Expected uint8 images [n, h, w, 3] (0-255, channels last); got "
                       f"{images.dtype} {images.shape}.")
    if not len(images):  # no batch to run
      return np.zeros((0, self.dim), np.float64)
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = np.asarray(images[start:start + self.batch_size], np.float32) / 255.0
      pad = self.batch_size - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], np.float32)])
      feats = np.asarray(self._apply({"params": self.params}, chunk), np.float64)
      out.append(feats[:len(feats) - pad])
    return np.concatenate(out)


def main(argv: list[str]) -> None:
  prog = "python -m llmimg_jax.eval.inception"
  overwrite = "--overwrite" in argv[1:]  # an existing OUT.npz is replaced only when told
  paths = [a for a in argv[1:] if a != "--overwrite"]
  if len(paths) != 2 or not paths[1].lower().endswith(".npz"):  # the loader tells by the suffix
    print(f"usage: {prog} WEIGHTS.pth OUT.npz [--overwrite]", file=sys.stderr)
    cli.fail(prog, f"expected the weights and an output file ending in .npz, got "
             f"{' '.join(argv[1:]) or 'nothing'} (weights: {WEIGHTS_URL})", 2)
  try:
    # A folder, a missing parent that cannot be made, an existing file: named before the
    # weights are read.
    out = output_files.check_output_file(paths[1], "OUT.npz", overwrite=overwrite)
    state = _read_state_dict(paths[0])
    _checked_params(state, paths[0])  # not an .npz that evaluate.py then refuses
    npz = io.BytesIO()
    np.savez(npz, **state)
    output_files.write_atomically(out, npz.getvalue())  # not half a file over an older one
  except (OSError, ValueError, ImportError) as e:  # missing, damaged, foreign, or no torch
    cli.fail(prog, str(e), 1)
  print(f"Wrote {len(state)} arrays to {paths[1]}.")


if __name__ == "__main__":
  main(sys.argv)
