"""The Flax FID InceptionV3 against pytorch-fid's own network with the same random weights.

The first test needs only numpy: it compares with features pytorch-fid computed once
(tests/eval/inception_reference.py). The others run pytorch-fid here and need torch, torchvision
and pytorch-fid (pip install torch==2.14.1 torchvision==0.29.1 pytorch-fid==0.3.0); they are
skipped with the reason otherwise. No weights are downloaded: pytorch-fid's `fid_inception_v3` is
replaced by the same construction without its `load_state_dict_from_url`.
"""
import hashlib
import re

import jax
import numpy as np
import pytest

from llmimg_jax.eval import inception
from tests.eval import inception_reference as reference
from tests.eval.utils import _damaged_npz_files

PROG = "python -m llmimg_jax.eval.inception"


def _pytorch_fid():
  try:
    import torch
    import torchvision  # noqa: F401
    from pytorch_fid import inception as pfi
  except Exception as e:  # torchvision fails to import against a mismatched torch
    pytest.skip(f"pytorch-fid parity needs torch + torchvision + pytorch-fid importable ({e!r}); "
                "pip install torch==2.14.1 torchvision==0.29.1 pytorch-fid==0.3.0")
  return torch, pfi


def _random_fid_inception(torch, pfi, monkeypatch):
  """pytorch-fid's InceptionV3 (block 3) and its inner network, with random weights."""
  return reference.pytorch_fid_model(reference.random_state_dict(), torch, pfi, monkeypatch)


def test_flax_inception_matches_committed_pytorch_fid_features():
  """Without torch: the features pytorch-fid computed from the same numpy-drawn weights
  (tests/eval/inception_reference.py made the file)."""
  with np.load(reference.PATH) as f:
    images, want = f["images"], f["features"]
  np.testing.assert_array_equal(images, reference.images())
  params = inception.params_from_state_dict(reference.random_state_dict())
  got = np.asarray(inception.FIDInceptionV3().apply({"params": params}, images))
  assert got.shape == want.shape == (2, 2048)
  assert np.abs(want).mean() > 0.05  # the random network is not degenerate
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_flax_inception_matches_pytorch_fid(monkeypatch):
  torch, pfi = _pytorch_fid()
  model, inner = _random_fid_inception(torch, pfi, monkeypatch)
  state = {k: v.numpy() for k, v in inner.state_dict().items()}  # the .pth file's layout
  images = reference.images()
  with torch.no_grad():
    want = model(torch.from_numpy(images).permute(0, 3, 1, 2))[0][:, :, 0, 0].numpy()  # [2, 2048]
  params = inception.params_from_state_dict(state)
  got = np.asarray(inception.FIDInceptionV3().apply({"params": params}, images))
  assert got.shape == want.shape == (2, 2048)
  assert np.abs(want).mean() > 0.05  # the random network is not degenerate
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_pth_and_converted_npz_load_the_same(tmp_path, monkeypatch):
  torch, pfi = _pytorch_fid()
  model, inner = _random_fid_inception(torch, pfi, monkeypatch)
  pth = tmp_path / "weights.pth"
  torch.save(inner.state_dict(), pth)
  npz = tmp_path / "weights.npz"
  inception.main(["x", str(pth), str(npz)])
  a, b = inception.load_params(str(pth)), inception.load_params(str(npz))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  # The batched uint8 wrapper evaluate.py uses (3 images in padded batches of 2).
  images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), np.uint8)
  got = inception.InceptionFeatures(str(npz), batch_size=2)(images)
  with torch.no_grad():
    x = torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    want = model(x)[0][:, :, 0, 0].numpy()
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_missing_weights_say_where_to_get_them(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:  # no .npz: refused as a usage error
    inception.main(["x", str(tmp_path / "w.pth"), str(tmp_path / "converted")])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == (
      f"usage: {PROG} WEIGHTS.pth OUT.npz [--overwrite]\n{PROG}: error: expected the weights "
      f"and an output file ending in .npz, got {tmp_path}/w.pth {tmp_path}/converted (weights: "
      f"{inception.WEIGHTS_URL})\n")
  with pytest.raises(FileNotFoundError, match="pytorch-fid/releases/download/fid_weights"):
    inception.load_params(str(tmp_path / "pt_inception-2015-12-05-6726825d.pth"))


def _error(capsys, argv: list[str]) -> str:
  """inception.main(argv)'s one stderr line before exiting with status 1."""
  with pytest.raises(SystemExit) as exit_info:
    inception.main(argv)
  assert exit_info.value.code == 1
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: "), lines
  return lines[0]


def test_an_output_that_cannot_be_written_is_one_error_before_the_weights_are_read(tmp_path,
                                                                                   capsys):
  """np.savez's traceback (FileNotFoundError, IsADirectoryError) after reading the weights."""
  (tmp_path / "folder.npz").mkdir()
  (tmp_path / "file").write_text("in the way")
  missing = str(tmp_path / "missing.pth")  # not read: the output is named first
  assert "OUT.npz" in _error(capsys, ["x", missing, str(tmp_path / "folder.npz")])
  assert "is a folder" in _error(capsys, ["x", missing, str(tmp_path / "folder.npz")])
  assert "cannot create its folder" in _error(capsys, ["x", missing, str(tmp_path / "file/w.npz")])


def test_the_conversion_keeps_an_existing_output_unless_told(tmp_path, capsys):
  """An existing OUT.npz (e.g. FID statistics named by mistake) was replaced without a word."""
  kept = tmp_path / "stats.NPZ"  # the suffix in any case: the format the loader reads
  kept.write_bytes(b"my statistics")
  pth = tmp_path / "missing.pth"  # not read: the output is checked first
  assert _error(capsys, ["x", str(pth), str(kept)]) == (
      f"{PROG}: error: OUT.npz {str(kept)!r} exists; remove it, name a new file, or pass "
      "--overwrite to replace it.")
  assert kept.read_bytes() == b"my statistics"
  assert "No Inception weights at" in _error(capsys, ["x", str(pth), str(kept), "--overwrite"])


def test_a_folder_given_as_the_weights_is_named(tmp_path):
  """A folder: '[Errno 21] Is a directory' (named .npz), or 'not a readable torch state dict;
  download the weights again' (any other name)."""
  for name in ("weights.npz", "weights"):
    (tmp_path / name).mkdir()
    with pytest.raises(ValueError, match=rf"{name} is a folder; name the weights file itself"):
      inception.load_params(str(tmp_path / name))


def test_an_npz_suffix_in_capitals_is_read_as_an_npz(tmp_path):
  """W.NPZ (a converted file) was read as a torch state dict: 'download the weights again'."""
  with open(tmp_path / "W.NPZ", "wb") as f:  # np.savez adds .npz to a path not ending in it
    np.savez(f, **{"fc.weight": np.zeros((1008, 2048), np.float32)})
  with pytest.raises(ValueError, match=r"W.NPZ has no '\*.conv.weight' entries"):
    inception.load_params(str(tmp_path / "W.NPZ"))


def test_damaged_or_foreign_pth_weights_are_one_clear_error(tmp_path, capsys):
  """A .pth that torch.load cannot read raised KeyError from inside pickle (evaluate.py
  --inception_weights and the README's conversion command printed a traceback)."""
  torch = pytest.importorskip("torch")
  junk, tensor = tmp_path / "junk.pth", tmp_path / "tensor.pth"
  junk.write_text("junk\n")
  torch.save(torch.zeros(3), tensor)  # a torch file, but not a state dict
  for path in (junk, tensor):
    with pytest.raises(ValueError, match=f"{path.name} is not a readable torch state dict .*"
                                         "pytorch-fid/releases"):
      inception.load_params(str(path))
    assert f"{path.name} is not a readable torch state" in _error(
        capsys, ["x", str(path), str(tmp_path / "out.npz")])
  assert "error: No Inception weights at" in _error(
      capsys, ["x", str(tmp_path / "missing.pth"), str(tmp_path / "out.npz")])
  assert not (tmp_path / "out.npz").exists()


def test_damaged_npz_weights_are_one_value_error(tmp_path):
  """A cut-short weights .npz raised zipfile.BadZipFile (evaluate.py printed a traceback)."""
  for path in _damaged_npz_files(tmp_path, {"Conv2d_1a_3x3.conv.weight": np.zeros((2, 3, 3, 3))}):
    with pytest.raises(ValueError, match=f"{path.name} is not a readable .npz file .*convert "
                                         "them again: python -m llmimg_jax.eval.inception "
                                         f"WEIGHTS.pth {path} --overwrite"):
      inception.load_params(str(path))


def test_foreign_or_partial_weights_are_one_error_naming_the_file(tmp_path, capsys):
  """A state dict missing one BN entry raised KeyError (evaluate.py --inception_weights printed a
  traceback); an .npz of FID statistics (mu, sigma) was refused without naming the file or the
  fix, and the converter wrote either one to OUT.npz without a word."""
  partial = reference.random_state_dict()
  del partial["Mixed_7c.branch_pool.bn.running_var"]
  cases = {"partial.npz": (partial, r"partial\.npz is missing entries of pytorch-fid's Inception "
                                    r"layout \(1, e\.g\. "
                                    r"'Mixed_7c\.branch_pool\.bn\.running_var'\)"),
           "stats.npz": ({"mu": np.zeros(3), "sigma": np.eye(3)},
                         r"stats\.npz has no '\*\.conv\.weight' entries \(keys like \['mu', "
                         r"'sigma'\]\): not pytorch-fid's Inception layout")}
  for name, (state, message) in cases.items():
    np.savez(tmp_path / name, **state)
    with pytest.raises(ValueError, match=f"{message}.*pass pytorch-fid's FID Inception weights "
                                         r"\(https://github\.com/.*or the \.npz converted"):
      inception.load_params(str(tmp_path / name))
    converting = ["x", str(tmp_path / name), str(tmp_path / "out.npz")]
    assert re.search(message, _error(capsys, converting))
  assert not (tmp_path / "out.npz").exists()
  torchvision_like = {**reference.random_state_dict(), "fc.weight": np.zeros((1000, 2048)),
                      "fc.bias": np.zeros(1000)}
  np.savez(tmp_path / "imagenet.npz", **torchvision_like)
  with pytest.raises(ValueError, match=r"imagenet\.npz holds an Inception of 1000 classes "
                                       r"\(torchvision's ImageNet inception_v3 has 1000\), not the "
                                       r"FID network of 1008.*pass pytorch-fid's FID Inception"):
    inception.load_params(str(tmp_path / "imagenet.npz"))
  fid_like = {**torchvision_like, "fc.weight": np.zeros((1008, 2048)), "fc.bias": np.zeros(1008)}
  np.savez(tmp_path / "fid.npz", **fid_like)
  inception.load_params(str(tmp_path / "fid.npz"))


def test_features_refuse_images_that_are_not_uint8_hwc(tmp_path):
  """Floats in [0, 1] (what pytorch-fid takes) were divided by 255 again, features of near-black
  images and an FID without a word; channels first failed inside the convolution."""
  weights = tmp_path / "w.npz"
  np.savez(weights, **reference.random_state_dict())
  features = inception.InceptionFeatures(str(weights), batch_size=2)
  good = reference.images()  # [2, 37, 37, 3] in [0, 1]
  for images, why in ((good, "float32"), (np.uint8(good * 255).transpose(0, 3, 1, 2), "(2, 3,")):
    with pytest.raises(ValueError, match=r"uint8 images \[n, h, w, 3\]") as e:
      features(images)
    assert why in str(e.value)
  real = features(np.uint8(good * 255))
  assert real.shape == (2, 2048)
  # No images (a selection that kept none): no features, not np.concatenate's 'need at least one
  # array to concatenate'.
  none = features(np.zeros((0, 37, 37, 3), np.uint8))
  assert none.shape == (0, 2048) and none.dtype == real.dtype
  # What evaluate.py's results record of the weights.
  assert features.source == {"path": str(weights),
                             "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}


def test_a_batch_size_that_is_not_a_positive_int_is_named(tmp_path):
  """InceptionFeatures(batch_size=0) failed at the first call with range()'s 'arg 3 must not be
  zero', -1 with np.concatenate's 'need at least one array', 2.5 with 'float object cannot be
  interpreted as an integer': refused when made, naming the argument and the fix."""
  weights = tmp_path / "w.npz"
  np.savez(weights, **reference.random_state_dict())
  images = np.zeros((2, 37, 37, 3), np.uint8)
  for bad in (0, -1, 2.5, True):
    with pytest.raises(ValueError, match=rf"^batch_size={bad} must be an int >= 1 \(images per "
                                         r"call of the network\)\.$"):
      inception.InceptionFeatures(str(weights), batch_size=bad)(images)
