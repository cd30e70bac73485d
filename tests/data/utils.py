"""Test fixtures for tests/data: small ICC profiles built byte by byte (no system profiles
needed), so colour-management tests use real profiles with known primaries and curves; the
script of a process reading batches from grain workers; a folder of captioned images, prepare's
command line of its build and the check of its usage errors; a stderr whose pipe's reader is
gone."""
from __future__ import annotations

import itertools
import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from llmimg_jax.data import prepare

_D50 = (0.9642, 1.0, 0.8249)


def _s15(v: float) -> bytes:
  return struct.pack(">i", round(v * 65536))  # s15Fixed16Number


def _xyz(x: float, y: float, z: float) -> bytes:
  return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def _curve(gamma: float) -> bytes:
  return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"


def _desc(text: str) -> bytes:
  """An ICC v2 textDescriptionType (ASCII part only)."""
  ascii_ = text.encode("ascii") + b"\0"
  return (b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + struct.pack(">II", 0, 0)
          + b"\0\0\0" + b"\0" * 67)


def icc_profile(space: bytes, description: str, tags: dict[str, bytes]) -> bytes:
  """An ICC v2 display profile of colour space `space` (b"RGB ", b"GRAY") with `tags`."""
  tags = {"desc": _desc(description), "wtpt": _xyz(*_D50), **tags}
  table, data = b"", b""
  start = 128 + 4 + 12 * len(tags)
  for sig, body in tags.items():
    body += b"\0" * (-len(body) % 4)
    table += sig.encode() + struct.pack(">II", start + len(data), len(body))
    data += body
  header = struct.pack(">I4sI4s4s4s", start + len(data), b"\0" * 4, 0x02100000, b"mntr", space,
                       b"XYZ ")
  header += b"\0" * 12 + b"acsp" + b"\0" * 28 + b"".join(_s15(v) for v in _D50)
  header += b"\0" * (128 - len(header))
  return header + struct.pack(">I", len(tags)) + table + data


def adobe_rgb_icc() -> bytes:
  """Adobe RGB (1998)'s primaries (D50-adapted) and gamma 563/256: wider than sRGB."""
  gamma = _curve(563 / 256)
  return icc_profile(b"RGB ", "Adobe-RGB-like test profile", {
      "rXYZ": _xyz(0.60974, 0.31111, 0.01947), "gXYZ": _xyz(0.20528, 0.62567, 0.06087),
      "bXYZ": _xyz(0.14919, 0.06322, 0.74457), "rTRC": gamma, "gTRC": gamma, "bTRC": gamma})


def linear_gray_icc() -> bytes:
  """A greyscale profile with a linear (gamma 1) tone curve: mid grey 128 is sRGB ~188."""
  return icc_profile(b"GRAY", "linear grey test profile", {"kTRC": _curve(1.0)})


def naive_cmyk_icc() -> bytes:
  """A CMYK (printer-class, Lab PCS) profile with one 2-point-per-ink lookup table: its corners
  are the naive CMYK colours (PIL's convert("RGB")) in Lab, interpolated in Lab between them, so
  mid tones differ from the naive conversion."""
  rgb = np.array([[255 * (1 - c) * (1 - k), 255 * (1 - m) * (1 - k), 255 * (1 - y) * (1 - k)]
                  for c, m, y, k in itertools.product((0, 1), repeat=4)], np.uint8)
  to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"),
                                   "RGB", "LAB")
  lab = np.asarray(ImageCms.applyTransform(Image.fromarray(rgb[None]), to_lab))[0].copy()
  lab[:, 1:] = (lab[:, 1:].view(np.int8).astype(int) + 128).astype(np.uint8)  # ICC a*, b* + 128
  identity = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
  ramp = bytes(range(256))
  a2b0 = b"mft1\0\0\0\0" + bytes([4, 3, 2, 0]) + identity + ramp * 4 + lab.tobytes() + ramp * 3
  icc = icc_profile(b"CMYK", "naive CMYK test profile", {"A2B0": a2b0})
  return icc[:12] + b"prtr" + icc[16:20] + b"Lab " + icc[24:]  # device class, PCS


def linear_srgb_icc(description: str = "sRGB linear (gamma 1.0)") -> bytes:
  """sRGB's primaries (D50-adapted) with a linear tone curve, as GIMP's "Linear sRGB" and
  Krita's "sRGB-elle-V2-g10": named sRGB, but mid grey 128 is sRGB ~188."""
  linear = _curve(1.0)
  return icc_profile(b"RGB ", description, {
      "rXYZ": _xyz(0.4361, 0.2225, 0.0139), "gXYZ": _xyz(0.3851, 0.7169, 0.0971),
      "bXYZ": _xyz(0.1431, 0.0606, 0.7141), "rTRC": linear, "gTRC": linear, "bTRC": linear})


def run_with_workers(data_cfg, body: str, **run_kw) -> subprocess.CompletedProcess:
  """Runs `body` (a script's main block, 4-space indented) in a new Python process where `it` is
  the pipeline's iterator of `data_cfg` with 2 grain workers, batches of 8 (workers need a
  process whose main module is guarded by __name__ == "__main__")."""
  script = textwrap.dedent(f"""
      import jax, multiprocessing, ml_collections
      from llmimg_jax.data import pipeline
      from llmimg_jax.text.tokenizer import load_tokenizer
      if __name__ == "__main__":
        cfg = ml_collections.ConfigDict({data_cfg.to_dict()!r})
        cfg.num_workers = 2
        it = pipeline.make_iterator(cfg, load_tokenizer(None, max_length=64),
                                    batch_size_per_host=8, seed=0)
  """) + textwrap.indent(textwrap.dedent(body), "  ")
  return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=120, check=False, **run_kw)


def _usage_error(capsys, argv: list[str]) -> str:
  """prepare.main(argv)'s one-line error (stderr): it must exit with 2."""
  with pytest.raises(SystemExit) as exit_info:
    prepare.main(argv)
  assert exit_info.value.code == 2
  return capsys.readouterr().err


def captioned_images(parent: Path, num: int) -> Path:
  """A folder parent/imgs of `num` 8px images, i.png a red from black (0) to 255 (the last),
  captioned "image i" in captions.jsonl."""
  folder = parent / "imgs"
  folder.mkdir()
  with open(folder / "captions.jsonl", "w") as f:
    for i in range(num):
      Image.new("RGB", (8, 8), (255 * i // max(num - 1, 1), 0, 0)).save(folder / f"{i}.png")
      f.write(json.dumps({"file": f"{i}.png", "caption": f"image {i}"}) + "\n")
  return folder


def folder_argv(folder, data_dir, *flags: str) -> list[str]:
  """prepare's command line building the captioned_folder `folder` into `data_dir` at 8px."""
  return ["--dataset", "captioned_folder", "--folder", str(folder), "--data_dir", str(data_dir),
          "--image_size", "8", *flags]


class ReaderGone:
  """stderr on a pipe whose reader is gone (`2>&1 | tee log`, tee killed)."""

  def write(self, text: str = "") -> int:
    raise BrokenPipeError(32, "Broken pipe")

  flush = write

  def isatty(self) -> bool:
    return False
