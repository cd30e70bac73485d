"""Fréchet distance between Gaussians fitted to features, computed in float64.

  FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

tr((S1 S2)^(1/2)) is computed as pytorch-fid does (scipy.linalg.sqrtm of the product; when the
result is not finite, the product is near singular and eps * I is added to both covariances; a
small imaginary part from round-off is dropped). Where pytorch-fid raises on a large imaginary part
(rank-deficient covariances: fewer samples than feature dimensions), the trace comes from the
eigenvalues of the symmetric S1^(1/2) S2 S1^(1/2) instead. Statistics are stored
as .npz files with arrays `mu` [d] and `sigma` [d, d], the format of pytorch-fid and DF-GAN.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
import zipfile
import zlib

import numpy as np

from llmimg_jax import output_files

log = logging.getLogger(__name__)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mu [d], sigma [d, d]) of features [n, d], in float64 (sigma with ddof=1, as pytorch-fid)."""
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or len(x) < 2:
    raise ValueError(f"Features must be [n >= 2, d]; got shape {x.shape}.")
  return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))  # d = 1: np.cov's is 0-d


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
  mu1, mu2 = (np.atleast_1d(np.asarray(mu, np.float64)) for mu in (mu1, mu2))  # [features]
  s1, s2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))  # [feat, feat]
  if mu1.shape != mu2.shape or s1.shape != s2.shape:
    raise ValueError(f"Statistics differ in shape: mu {mu1.shape} vs {mu2.shape}, sigma "
                     f"{s1.shape} vs {s2.shape} (features of different networks?).")
  # NaN in sigma: 'Internal error in scipy.linalg.sqrtm: -102'; in mu: a NaN distance
  if bad := [n for n, a in zip(("mu1", "sigma1", "mu2", "sigma2"), (mu1, s1, mu2, s2))
             if not np.isfinite(a).all()]:
    raise ValueError(f"Statistics {', '.join(bad)} hold NaN or inf: no distance to compute.")
  diff = mu1 - mu2
  covmean = _sqrtm(s1 @ s2)
  if not np.isfinite(covmean).all():
    log.warning("Fréchet distance: singular product of covariances; adding %g to the diagonals.",
                eps)
    offset = np.eye(s1.shape[0]) * eps
    covmean = _sqrtm((s1 + offset) @ (s2 + offset))
  trace_covmean = np.trace(covmean.real)
  if np.iscomplexobj(covmean) and not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
    # Round-off of sqrtm on rank-deficient covariances (fewer samples than feature dimensions,
    # e.g. 256 images of 576-d features), where pytorch-fid raises: the same trace, stably.
    log.warning("Fréchet distance: sqrtm(S1 S2) has an imaginary part of %g (fewer samples than "
                "feature dimensions?); taking tr((S1 S2)^(1/2)) from the eigenvalues of "
                "S1^(1/2) S2 S1^(1/2) instead.", np.abs(covmean.imag).max())
    trace_covmean = _trace_sqrt_product(s1, s2)
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_covmean)


def _sqrtm(m: np.ndarray) -> np.ndarray:
  """scipy.linalg.sqrtm without its LinAlgWarning 'Matrix is singular. The result might be
  inaccurate', printed at every evaluation of fewer images than feature dimensions (or with a dead
  feature): the trace is then still exact, and frechet_distance checks what can go wrong (a
  non-finite result, a large imaginary part) itself. pytorch-fid silences it too (disp=False)."""
  import scipy.linalg  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
    return scipy.linalg.sqrtm(m)


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
  """tr((S1 S2)^(1/2)) as the sum of the square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2),
  which has the same eigenvalues and is symmetric positive semi-definite (no complex round-off)."""
  w, v = np.linalg.eigh(s1)
  root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S1^(1/2)
  return float(np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0, None)).sum())


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
  return frechet_distance(*statistics(a), *statistics(b))


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray,
                    **meta: object) -> None:
  """An .npz at exactly `path` (np.savez given a name would add '.npz' to one without it), written
  through a link as `>` would, in one rename (--overwrite_stats never truncates the old file)."""
  output_files.write_atomically(os.path.realpath(path), statistics_npz(mu, sigma, **meta))


def statistics_npz(mu: np.ndarray, sigma: np.ndarray, **meta: object) -> bytes:
  """The bytes of save_statistics' .npz: mu, sigma and each of `meta` as an array."""
  npz = io.BytesIO()
  np.savez(npz, mu=mu, sigma=sigma, **{k: np.asarray(v) for k, v in meta.items()})
  return npz.getvalue()


# What np.load raises for a file that is not a whole .npz: cut short (no zip directory, a
# truncated member), another format (text, which it tries as a pickle; an .npy, no NpzFile).
_NOT_NPZ = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, TypeError)


def read_npz(path: str | os.PathLike, fix: str) -> dict[str, np.ndarray]:
  """The arrays of the .npz at `path` (pickled object arrays, not ours, left out); a file that is
  not a readable .npz is a ValueError naming it, with `fix`."""
  if os.path.isdir(path):  # IsADirectoryError's "[Errno 21]" names neither the flag nor a fix
    raise ValueError(f"{path} is a folder; name the .npz file itself.")
  try:  # our own file object: np.load leaves one it opened open if the zip is cut short
    with open(path, "rb") as fh, np.load(fh) as f:
      out = {}
      for k in f.keys():
        try:
          out[k] = f[k]
        except ValueError:  # an object array: np.load does not unpickle (and none is ours)
          pass
      return out
  except _NOT_NPZ as e:  # numpy tries other files as pickles: its advice (unpickle) is not ours
    why = ("neither a zip archive nor an .npy array" if "pickled" in str(e) else
           f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
    raise ValueError(f"{path} is not a readable .npz file ({why}); {fix}") from None


STATS_FIX = ("write the statistics again with `python evaluate.py --write_stats PATH ...` or use "
             "DF-GAN's .npz.")


def file_sha256(path: str | os.PathLike) -> str:
  """The sha256 of a file (results name the weights and statistics their FIDs are of)."""
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def statistics_info(path: str | os.PathLike) -> dict:
  """What else a statistics .npz holds (evaluate.py --write_stats: num_images, dataset, split,
  image_size), as values a JSON file can hold: the results record it (bytes, a date or a
  complex number would fail their write, after the whole evaluation)."""
  return {k: _json_value(v.item()) for k, v in read_npz(path, STATS_FIX).items()
          if k not in ("mu", "sigma") and v.ndim == 0}


def _json_value(value: object) -> str | int | float | bool:
  if isinstance(value, (str, int, float, bool)):
    return value
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  return str(value)


def load_statistics(path: str | os.PathLike, dim: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
  """(mu [d], sigma [d, d]) from an .npz; ValueError unless d == `dim` (when given)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"No FID statistics at {path}; write them for a real split with "
                            "`python evaluate.py --write_stats PATH ...` or use DF-GAN's .npz.")
  f = read_npz(path, STATS_FIX)
  if "mu" not in f or "sigma" not in f:
    raise ValueError(f"{path} has arrays {sorted(f)}; FID statistics need 'mu' and 'sigma'.")
  mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
  d = mu.shape[0] if mu.ndim == 1 else -1
  if d < 1 or sigma.shape != (d, d) or (dim is not None and d != dim):
    raise ValueError(f"{path} holds mu {mu.shape} and sigma {sigma.shape}; FID statistics of "
                     f"{dim or 'd'}-d features need mu ({dim or 'd'},) and sigma "
                     f"({dim or 'd'}, {dim or 'd'}).")
  if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
    raise ValueError(f"{path} holds NaN or inf in mu or sigma; {STATS_FIX}")
  # No covariance: the distance to it is a number, and meaningless (-sigma's FID is lower). Some
  # tools' float32 covariances differ from their transpose by rounding (~1e-6 of the largest).
  if (np.abs(sigma - sigma.T).max() > 1e-4 * np.abs(sigma).max()
      or (np.diagonal(sigma) < 0).any()):
    raise ValueError(f"{path} holds a sigma that is no covariance matrix (not symmetric, or a "
                     f"negative variance); {STATS_FIX}")
  return mu, sigma
