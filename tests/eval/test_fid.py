"""The Fréchet distance: exact on known Gaussians, ~0 for a set with itself, monotone in noise,
finite on singular covariances; statistics files round-trip."""
import gc
import warnings

import numpy as np
import pytest

from llmimg_jax.eval import fid
from tests.eval.utils import _damaged_npz_files


def test_matches_closed_form_for_diagonal_gaussians():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  v1, v2 = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
  want = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
  assert fid.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(want, rel=1e-9)


def test_self_is_zero_and_noise_grows_monotonically():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2000, 32)) @ rng.normal(size=(32, 32))  # correlated features
  assert abs(fid.fid_from_features(x, x)) < 1e-6
  noise = rng.normal(size=x.shape)
  values = [fid.fid_from_features(x, x + s * noise) for s in (0.1, 0.3, 1.0, 3.0)]
  assert all(a < b for a, b in zip(values, values[1:])), values
  assert values[0] > 0


def test_near_singular_covariances_are_finite_and_real():
  rng = np.random.default_rng(1)
  # 20 samples of 64-d features: rank-19 covariances, a singular product.
  a, b = rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) + 0.5
  d = fid.fid_from_features(a, b)
  assert np.isfinite(d) and isinstance(d, float)
  assert d > 0
  # Exactly singular (a constant feature) still works, and the self-distance stays ~0.
  a[:, 0] = 1.0
  assert abs(fid.fid_from_features(a, a)) < 1e-4
  assert np.isfinite(fid.fid_from_features(a, b))


def test_statistics_are_the_mean_and_the_unbiased_covariance():
  """As pytorch-fid (np.cov's n - 1): a covariance over n would shift every FID."""
  x = np.array([[0.0, 1.0], [2.0, 5.0], [4.0, 0.0]])
  mu, sigma = fid.statistics(x)
  np.testing.assert_allclose(mu, [2.0, 2.0])
  centred = x - [2.0, 2.0]  # [[-2, -1], [0, 3], [2, -2]]
  np.testing.assert_allclose(sigma, centred.T @ centred / 2)  # [[4, -1], [-1, 7]]
  np.testing.assert_allclose(sigma, [[4.0, -1.0], [-1.0, 7.0]])


def test_one_dimensional_features_round_trip(tmp_path):
  """np.cov of [n, 1] features is 0-d: saved so, load_statistics refused the file."""
  mu, sigma = fid.statistics(np.random.default_rng(0).normal(size=(10, 1)))
  assert (mu.shape, sigma.shape) == ((1,), (1, 1))
  fid.save_statistics(tmp_path / "s.npz", mu, sigma)
  np.testing.assert_array_equal(fid.load_statistics(tmp_path / "s.npz", 1)[1], sigma)


def test_statistics_holding_nan_or_inf_are_named(tmp_path):
  """NaN in sigma failed in scipy ('Internal error in scipy.linalg.sqrtm: -102'); NaN in mu gave
  a NaN distance without a word; a file holding them was accepted."""
  mu, sigma = fid.statistics(np.random.default_rng(0).normal(size=(50, 3)))
  bad = sigma.copy()
  bad[2, 2] = np.nan
  with pytest.raises(ValueError, match=r"^Statistics sigma2 hold NaN or inf"):
    fid.frechet_distance(mu, sigma, mu, bad)
  with pytest.raises(ValueError, match=r"^Statistics mu1 hold NaN or inf"):
    fid.frechet_distance(mu + np.inf, sigma, mu, sigma)
  np.savez(tmp_path / "bad.npz", mu=mu, sigma=bad)
  with pytest.raises(ValueError, match=r"bad.npz holds NaN or inf in mu or sigma; write the "):
    fid.load_statistics(tmp_path / "bad.npz")


def test_a_sigma_that_is_no_covariance_is_refused(tmp_path):
  """-sigma (or any matrix that is no covariance) gave an FID without a word: 21.3 against the
  real sigma's 55.8 in evaluate.py."""
  mu, sigma = fid.statistics(np.random.default_rng(0).normal(size=(50, 3)))
  skew = sigma.copy()
  skew[0, 1] += 1.0
  for name, bad in (("negative", -sigma), ("skew", skew)):
    np.savez(tmp_path / f"{name}.npz", mu=mu, sigma=bad)
    with pytest.raises(ValueError, match=rf"{name}.npz holds a sigma that is no covariance "
                                         r"matrix \(not symmetric, or a negative variance\)"):
      fid.load_statistics(tmp_path / f"{name}.npz")
  rounded = sigma * (1 + 1e-6 * np.triu(np.ones_like(sigma), 1))  # float32 sums' rounding
  np.savez(tmp_path / "fine.npz", mu=mu, sigma=rounded)
  np.testing.assert_array_equal(fid.load_statistics(tmp_path / "fine.npz")[1], rounded)
  np.savez(tmp_path / "empty.npz", mu=np.zeros(0), sigma=np.zeros((0, 0)))  # numpy's max() error
  with pytest.raises(ValueError, match=r"empty.npz holds mu \(0,\) and sigma \(0, 0\)"):
    fid.load_statistics(tmp_path / "empty.npz")


def test_a_folder_given_as_an_npz_is_named(tmp_path):
  """IsADirectoryError's '[Errno 21] Is a directory' named no flag and no fix."""
  (tmp_path / "stats.npz").mkdir()
  with pytest.raises(ValueError, match=r"stats.npz is a folder; name the .npz file itself.$"):
    fid.load_statistics(tmp_path / "stats.npz")


def test_a_non_finite_sqrtm_retries_with_eps_on_the_diagonals(monkeypatch, caplog):
  """pytorch-fid's fallback: sqrtm of the product not finite -> (S1 + eps I)(S2 + eps I)."""
  import scipy.linalg
  rng = np.random.default_rng(2)
  (m1, s1), (m2, s2) = fid.statistics(rng.normal(size=(30, 3))), fid.statistics(
      rng.normal(size=(30, 3)) + 1)
  eps = 0.5  # large enough that the retried value differs from the plain one
  offset = eps * np.eye(3)
  want = (np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2)
          - 2 * np.trace(scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset)).real))
  sqrtm, calls = scipy.linalg.sqrtm, []
  def first_call_nan(m):
    calls.append(m)
    return np.full_like(m, np.nan) if len(calls) == 1 else sqrtm(m)
  monkeypatch.setattr(scipy.linalg, "sqrtm", first_call_nan)
  with caplog.at_level("WARNING", logger="llmimg_jax.eval.fid"):
    got = fid.frechet_distance(m1, s1, m2, s2, eps=eps)
  assert got == pytest.approx(want, rel=1e-9)
  plain = (np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2)
           - 2 * np.trace(sqrtm(s1 @ s2).real))
  assert got != pytest.approx(plain, rel=1e-3)
  assert "singular product of covariances; adding 0.5" in caplog.text


def test_fewer_samples_than_dimensions_give_the_distance_not_an_error(monkeypatch, caplog):
  """Rank-deficient covariances (fewer samples than dimensions: 256 images of 576-d features in
  training) can leave sqrtm(S1 S2) an imaginary part above pytorch-fid's limit, where it raises:
  the trace then comes from the eigenvalues of the symmetric S1^(1/2) S2 S1^(1/2)."""
  import scipy.linalg
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(40, 64)), np.maximum(rng.normal(size=(40, 64)) + 0.5, 0)
  (m1, s1), (m2, s2) = fid.statistics(a), fid.statistics(b)
  eig = np.linalg.eigvals(s1 @ s2).real  # real and >= 0 up to round-off
  want = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(eig.clip(0)).sum()
  assert fid._trace_sqrt_product(s1, s2) == pytest.approx(np.sqrt(eig.clip(0)).sum(), rel=1e-6)
  sqrtm = scipy.linalg.sqrtm  # as on such covariances: an imaginary part of ~1e-2; its real
  # part made 10% off, so that only the eigenvalues' trace gives `want`
  monkeypatch.setattr(scipy.linalg, "sqrtm", lambda m: sqrtm(m) * 1.1 + 1e-2j * np.eye(len(m)))
  with caplog.at_level("WARNING", logger="llmimg_jax.eval.fid"):
    assert fid.frechet_distance(m1, s1, m2, s2) == pytest.approx(want, rel=1e-6)
  assert "imaginary part" in caplog.text


def test_statistics_round_trip(tmp_path):
  x = np.random.default_rng(0).normal(size=(50, 4))
  mu, sigma = fid.statistics(x)
  fid.save_statistics(tmp_path / "s.npz", mu, sigma, num_images=50)
  mu2, sigma2 = fid.load_statistics(tmp_path / "s.npz")
  np.testing.assert_array_equal(mu, mu2)
  np.testing.assert_array_equal(sigma, sigma2)
  np.savez(tmp_path / "bad.npz", m=mu)
  with pytest.raises(ValueError, match="'mu' and 'sigma'"):
    fid.load_statistics(tmp_path / "bad.npz")
  with pytest.raises(ValueError, match=r"s.npz holds mu \(4,\) and sigma \(4, 4\); FID "
                                       r"statistics of 2048-d features need mu \(2048,\)"):
    fid.load_statistics(tmp_path / "s.npz", 2048)
  with pytest.raises(FileNotFoundError, match="write_stats"):
    fid.load_statistics(tmp_path / "missing.npz")
  fid.save_statistics(tmp_path / "no_suffix", mu, sigma)  # written where named
  np.testing.assert_array_equal(fid.load_statistics(tmp_path / "no_suffix")[0], mu)


def test_replacing_statistics_is_atomic_and_follows_a_link(tmp_path):
  """--overwrite_stats opened the old file for writing first: a write that failed (here pickling
  a metadata value) left it cut short."""
  mu, sigma = fid.statistics(np.random.default_rng(0).normal(size=(10, 3)))
  (tmp_path / "stats").mkdir()
  target = tmp_path / "stats" / "s.npz"
  fid.save_statistics(target, mu, sigma)
  link = tmp_path / "s.npz"
  link.symlink_to(target)
  with pytest.raises(Exception, match="pickle"):
    fid.save_statistics(link, mu * 2, sigma, bad=lambda: 0)
  np.testing.assert_array_equal(fid.load_statistics(link)[0], mu)  # the old file, whole
  assert sorted(p.name for p in (tmp_path / "stats").iterdir()) == ["s.npz"]  # no temporary
  fid.save_statistics(link, mu * 2, sigma)
  assert link.is_symlink()  # written through to its target, as `>` would
  np.testing.assert_array_equal(fid.load_statistics(target)[0], mu * 2)


def test_damaged_statistics_files_are_one_value_error(tmp_path):
  """zipfile.BadZipFile (a traceback in evaluate.py) for a cut-short file, numpy's advice to
  unpickle for a text file, a TypeError for an .npy: now ValueErrors naming the file."""
  for path in _damaged_npz_files(tmp_path, {"mu": np.zeros(2), "sigma": np.eye(2)}):
    for read in (fid.load_statistics, fid.statistics_info):
      with pytest.raises(ValueError, match=f"{path.name} is not a readable .npz file .*"
                                           "write the statistics again") as e:
        read(path)
      assert "allow_pickle" not in str(e.value)


def test_a_damaged_npz_is_closed(tmp_path):
  """np.load leaves the file it opened open when a zip's directory is cut off (numpy 2.4's
  NpzFile raises before it owns the file): a ResourceWarning at each such read."""
  for path in _damaged_npz_files(tmp_path, {"mu": np.zeros(2)}):
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always", ResourceWarning)
      with pytest.raises(ValueError):
        fid.read_npz(path, "fix")
      gc.collect()  # the exception's frames (and any file left in them) freed here
    # This file's: the collection also finalizes earlier tests' garbage (files they left open).
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)
                and str(path) in str(w.message)], [str(w.message) for w in caught]


def test_an_object_array_member_is_left_out_not_fatal(tmp_path):
  """Another tool's .npz may hold pickled object arrays beside mu and sigma: those are skipped
  (np.load does not unpickle), the statistics still load."""
  path = tmp_path / "stats.npz"
  np.savez(path, mu=np.ones(2), sigma=np.eye(2), num_images=np.int64(7),
           extra=np.array([{"a": 1}], dtype=object))
  mu, sigma = fid.load_statistics(path)
  np.testing.assert_array_equal(mu, np.ones(2))
  np.testing.assert_array_equal(sigma, np.eye(2))
  assert fid.statistics_info(path) == {"num_images": 7}


def test_what_a_statistics_file_records_is_json(tmp_path):
  """Bytes (or a date, a complex number) beside mu and sigma: evaluate.py's results, which record
  them, failed their write with a TypeError after the whole evaluation, and were lost."""
  import json
  path = tmp_path / "stats.npz"
  np.savez(path, mu=np.ones(2), sigma=np.eye(2), dataset=np.asarray(b"coco/2014"),
           when=np.datetime64("2026-12-07"), z=np.complex64(1 + 2j), ok=np.bool_(True),
           size=np.int32(32), tag=np.asarray("val"))
  info = fid.statistics_info(path)
  assert info == {"dataset": "coco/2014", "when": "2026-12-07", "z": "(1+2j)", "ok": True,
                  "size": 32, "tag": "val"}
  assert json.loads(json.dumps(info)) == info


def test_exactly_singular_covariances_give_the_exact_distance_without_scipys_warning():
  """A dead (constant) feature or fewer images than dimensions made scipy print 'Matrix is
  singular. The result might be inaccurate' at every evaluation (and in-training eval), though
  the distance is exact: the same as from the eigenvalues of S1^(1/2) S2 S1^(1/2)."""
  import warnings
  rng = np.random.default_rng(0)
  a = np.maximum(rng.normal(size=(200, 96)) @ rng.normal(size=(96, 96)) * 0.1, 0)
  b = np.maximum(rng.normal(size=(200, 96)) @ rng.normal(size=(96, 96)) * 0.1 + 0.1, 0)
  a[:, :10], b[:, :10] = 0.0, 0.5  # dead features: both covariances exactly singular
  (m1, s1), (m2, s2) = fid.statistics(a), fid.statistics(b)
  want = (np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2)
          - 2 * fid._trace_sqrt_product(s1, s2))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert fid.frechet_distance(m1, s1, m2, s2) == pytest.approx(want, rel=1e-7)
