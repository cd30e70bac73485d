"""Prompt files in; PNGs, a captioned grid and samples.jsonl out."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from llmimg_jax import cli
from llmimg_jax.images import captioned_grid
from llmimg_jax.sample.sampler import SampleResult, check_prompts

GRID_NAME = "grid.png"
JSONL_NAME = "samples.jsonl"


def _old_outputs(out: Path) -> list[Path]:
  """What an earlier write_samples left in `out`."""
  if not out.is_dir():
    return []
  return sorted([*out.glob("p[0-9]*_s[0-9]*.png"), *(out / n for n in (GRID_NAME, JSONL_NAME)
                                                      if (out / n).exists())])


def check_out_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> None:
  """Raises if `write_samples` could not create or write `out_dir`, or (unless `overwrite`) if
  it holds an earlier run's samples (checked before sampling)."""
  if not str(out_dir).strip():
    raise ValueError("The output directory is empty (--out=''); name a directory for the images.")
  out = cli.expand_home(out_dir, "--out")
  existing = next(p for p in (out, *out.parents) if p.exists())
  if not existing.is_dir():
    raise NotADirectoryError(f"Output {out_dir!r}: {existing} is a file; pass a directory for "
                             "the images (it is created if missing).")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise PermissionError(f"Output {out_dir!r}: {existing} is not writable; pass a directory "
                          "you can write to.")
  old = _old_outputs(out)
  if old and not overwrite:
    raise FileExistsError(
        f"Output '{out}' already holds samples ({len(old)} files, e.g. {old[0].name}); pass "
        "a new directory, or --overwrite to replace them (new and old images would "
        "otherwise mix, and samples.jsonl would describe only the new ones).")


def read_prompts(prompts: Sequence[str] | str = (), prompts_file: str | os.PathLike | None = None
                 ) -> list[str]:
  """`prompts`, then one prompt per non-blank line of `prompts_file` (UTF-8; '#' lines skipped)."""
  prompts = [prompts] if isinstance(prompts, str) else list(prompts)  # not one per character
  if prompts_file is not None and not str(prompts_file).strip():  # e.g. "$FILE" unset
    raise ValueError(f"The prompts file name is blank (--prompts_file={str(prompts_file)!r}); "
                     "name a UTF-8 text file with one prompt per line, or drop the flag.")
  if prompts_file:
    path = cli.expand_home(prompts_file, "--prompts_file")
    try:
      text = path.read_text(encoding="utf-8-sig")  # a BOM (as some editors write) is dropped
    except FileNotFoundError:
      raise FileNotFoundError(f"Prompts file {path} does not exist; pass a UTF-8 text file "
                              "with one prompt per line.") from None
    except (OSError, UnicodeDecodeError) as e:
      raise ValueError(f"Could not read prompts file {path} ({type(e).__name__}: {e}); it must "
                       "be UTF-8 text with one prompt per line.") from None
    # Lines end at \n, \r\n or \r only (str.splitlines would also split at U+2028, \x0c, ...).
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    from_file = [line.strip() for line in lines]
    from_file = [p for p in from_file if p and not p.startswith("#")]
    if not from_file:
      raise ValueError(f"Prompts file {path} has no prompts (only blank or '#' lines); write one "
                       "prompt per line.")
    if json_line := next((p for p in from_file if _is_json_object(p)), None):
      raise ValueError(f"Prompts file {path} holds JSON objects (e.g. {json_line[:60]!r}), not "
                       "plain prompts; write one prompt per line (from a captions.jsonl: "
                       "`jq -r .caption captions.jsonl > prompts.txt`).")
    prompts += from_file
  if not prompts:
    raise ValueError("No prompts: pass --prompt TEXT (repeatable) or --prompts_file FILE.")
  return check_prompts(prompts)


def _is_json_object(line: str) -> bool:
  if not line.startswith("{"):
    return False
  try:
    return isinstance(json.loads(line), dict)
  except ValueError:
    return False


# Line breaks for str.splitlines() that JSON leaves unescaped (they can only occur in strings).
_LINE_BREAKS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}


def _jsonl_line(record: dict) -> str:
  """One JSON line that stays one line for any reader, whatever the prompt contains."""
  line = json.dumps(record, ensure_ascii=False)
  for char, escaped in _LINE_BREAKS.items():
    line = line.replace(char, escaped)
  return line + "\n"


def image_name(prompt_index: int, sample_index: int) -> str:
  return f"p{prompt_index:04d}_s{sample_index:03d}.png"


def write_samples(result: SampleResult, out_dir: str | os.PathLike,
                  extra: dict | None = None, *, overwrite: bool = False) -> list[dict]:
  """One PNG per image, GRID_NAME (a row per prompt, its caption underneath) and JSONL_NAME.
  A directory with earlier samples is refused, or with `overwrite` has them replaced, only once
  every new file is written (in a staging folder inside `out_dir`, then renamed into place).

  Returns the jsonl records: file, prompt, caption (the expanded caption, or null), prompt_index,
  sample_index, seed, step, truncation, plus `extra`.
  """
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
    for path in _old_outputs(out):
      path.unlink()
    for name in [r["file"] for r in records] + [GRID_NAME, JSONL_NAME]:  # the index last
      os.replace(staging / name, out / name)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return records
