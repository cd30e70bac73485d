r"""pytorch-fid's InceptionV3 features of random weights, for a parity test that needs no torch.

The weights come from numpy alone (`random_state_dict`, in pytorch-fid's state-dict layout), so
the test rebuilds them anywhere; the features pytorch-fid computes from them are committed in
inception_reference.npz. Regenerate that file where torch, torchvision and pytorch-fid import
(torchvision imports here only beside torch 2.14.1, a CUDA build: use a separate venv):

  python -m venv /tmp/fid && /tmp/fid/bin/pip install torch==2.14.1 torchvision==0.29.1 \
      pytorch-fid==0.3.0 jax==0.10.2 flax==0.12.8
  PYTHONPATH=. /tmp/fid/bin/python tests/eval/inception_reference.py
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from llmimg_jax.eval import inception

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inception_reference.npz")


def random_state_dict(seed: int = 1) -> dict[str, np.ndarray]:
  """Every conv + batch norm of FIDInceptionV3 under pytorch-fid's names, drawn so activations
  neither vanish nor explode through the ~95 layers (variance-preserving through the ReLUs)."""
  shapes = jax.eval_shape(inception.FIDInceptionV3().init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 75, 75, 3)))["params"]
  kernels = {k[:-len(".conv.kernel")]: v.shape
             for k, v in traverse_util.flatten_dict(shapes, sep=".").items()
             if k.endswith(".conv.kernel")}
  rng, state = np.random.default_rng(seed), {}
  for prefix, (kh, kw, cin, cout) in sorted(kernels.items()):
    state[f"{prefix}.conv.weight"] = rng.standard_normal((cout, cin, kh, kw)) * (
        2.0 / (cin * kh * kw)) ** 0.5
    state[f"{prefix}.bn.weight"] = rng.random(cout) * 0.5 + 0.75
    state[f"{prefix}.bn.bias"] = rng.standard_normal(cout) * 0.1
    state[f"{prefix}.bn.running_mean"] = rng.standard_normal(cout) * 0.1
    state[f"{prefix}.bn.running_var"] = rng.random(cout) * 0.5 + 0.75
  return {k: v.astype(np.float32) for k, v in state.items()}


def pytorch_fid_model(state: dict[str, np.ndarray], torch, pfi, monkeypatch=None):
  """pytorch-fid's InceptionV3 (pool features, block 3) holding `state`, without the weights
  download of its `fid_inception_v3` (the same construction, with random init)."""
  inner = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  inner.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
  inner.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
  inner.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
  inner.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
  inner.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
  inner.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
  inner.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
  inner.Mixed_7b = pfi.FIDInceptionE_1(1280)
  inner.Mixed_7c = pfi.FIDInceptionE_2(2048)
  result = inner.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()},
                                 strict=False)
  unused = [k for k in result.missing_keys
            if not k.endswith("num_batches_tracked") and not k.startswith("fc.")]
  assert not unused and not result.unexpected_keys, (unused, result.unexpected_keys)
  if monkeypatch is not None:
    monkeypatch.setattr(pfi, "fid_inception_v3", lambda: inner)
  else:
    pfi.fid_inception_v3 = lambda: inner
  return pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval(), inner


def images() -> np.ndarray:
  """Two images in [0, 1] [2, 37, 37, 3] (not 299: the network's bilinear resize is compared)."""
  return np.random.default_rng(0).uniform(0, 1, (2, 37, 37, 3)).astype(np.float32)


def main() -> None:
  import torch
  from pytorch_fid import inception as pfi
  model, _ = pytorch_fid_model(random_state_dict(), torch, pfi)
  x = images()
  with torch.no_grad():
    features = model(torch.from_numpy(x).permute(0, 3, 1, 2))[0][:, :, 0, 0].numpy()
  from importlib.metadata import version
  np.savez(PATH, images=x, features=features,
           made_with=np.array([f"torch {torch.__version__}",
                               f"pytorch-fid {version('pytorch-fid')}"]))
  print(f"Wrote {PATH}: features {features.shape}, mean |f| {np.abs(features).mean():.4f}")


if __name__ == "__main__":
  main()
