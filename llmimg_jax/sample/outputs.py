"""PNGs, a captioned grid and samples.jsonl out (checks.py reads the prompts and checks the
output directory first)."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from llmimg_jax import output_files
from llmimg_jax.images import captioned_grid
from llmimg_jax.sample.checks import GRID_NAME, JSONL_NAME, check_out_dir, old_outputs
from llmimg_jax.sample.sampler import SampleResult

# Line breaks for str.splitlines() that JSON leaves unescaped (they can only occur in strings).
_LINE_BREAKS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}


def _jsonl_line(record: dict) -> str:
  """One JSON line that stays one line for any reader, whatever the prompt contains (NaN and inf,
  which no JSON holds, a ValueError: JavaScript's reader refused the Infinity Python wrote)."""
  line = json.dumps(record, ensure_ascii=False, allow_nan=False)
  for char, escaped in _LINE_BREAKS.items():
    line = line.replace(char, escaped)
  # Lone surrogates (a path of non-UTF-8 bytes, as Python decodes it) as JSON escapes: UTF-8
  # cannot hold them, and a JSON reader gets the same str back.
  return re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", line) + "\n"


def image_name(prompt_index: int, sample_index: int) -> str:
  return f"p{prompt_index:04d}_s{sample_index:03d}.png"


def write_samples(result: SampleResult, out_dir: str | os.PathLike,
                  extra: dict | None = None, *, overwrite: bool = False) -> list[dict]:
  """One PNG per image, GRID_NAME (a row per prompt, its caption underneath) and JSONL_NAME.
  A directory with earlier samples is refused, or with `overwrite` has them replaced, only once
  every new file is written (in a staging folder inside `out_dir`, then renamed into place; a
  link among them is written through to its target and kept).

  Returns the jsonl records: file, prompt, caption (the expanded caption, or null), prompt_index,
  sample_index, seed, step, truncation, plus `extra`.
  """
  try:  # the other fields are checked numbers
    _jsonl_line(extra or {})
  except ValueError:
    raise ValueError(f"write_samples' extra fields hold NaN or inf ({extra!r}), which JSON "
                     "readers refuse: pass finite numbers.") from None
  check_out_dir(out_dir, overwrite)
  out = Path(out_dir).expanduser()
  out.mkdir(parents=True, exist_ok=True)
  staging = Path(tempfile.mkdtemp(prefix=".samples-", dir=out))
  try:
    n = result.num_per_prompt
    records = []
    for k, image in enumerate(result.images):
      p, j = divmod(k, n)
      name = image_name(p, j)
      Image.fromarray(image).save(staging / name)
      records.append({
          "file": name, "prompt": result.prompts[p],
          "caption": result.captions[p] if result.expanded else None,
          "prompt_index": p, "sample_index": j, "seed": result.seed, "step": result.step,
          "truncation": result.truncation, **(extra or {})})
    # Grid rows show what conditioned the generator: the expanded caption when there is one.
    captions = [f"{p} -> {c}" if result.expanded else p
                for p, c in zip(result.prompts, result.captions)]
    captioned_grid(result.images, captions).save(staging / GRID_NAME)
    (staging / JSONL_NAME).write_text("".join(_jsonl_line(r) for r in records), encoding="utf-8")
    names = [r["file"] for r in records] + [GRID_NAME, JSONL_NAME]  # the index last
    with _locked(out):  # another sample.py on this --out waits here, then finds these
      if not overwrite and (written := old_outputs(out)):
        raise FileExistsError(
            f"Output '{out}' received other samples while these were written ({len(written)} "
            f"files, e.g. {written[0].name}; another sample.py?), which are kept; these were not "
            "written: pass a new directory, or --overwrite to replace those.")
      for path in old_outputs(out):
        if not (path.is_symlink() and path.name in names):
          path.unlink()
      for name in names:  # a link is written through (its target replaced), as evaluate.py's
        if (out / name).is_symlink():
          output_files.write_atomically(os.path.realpath(out / name),
                                        (staging / name).read_bytes())
        else:
          os.replace(staging / name, out / name)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return records


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
  """An flock on `folder` itself (none where its filesystem has no flock)."""
  fd = os.open(folder, os.O_RDONLY)
  try:
    with contextlib.suppress(OSError):
      fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)
