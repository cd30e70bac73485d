"""Sampling's inputs checked without JAX (or NumPy): sample.py reads the prompts and checks --out
and its other flags with these before JAX and the checkpoint load, so a bad flag fails at once;
Sampler, CaptionExpander and write_samples run them too."""
from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmimg_jax import cli
from llmimg_jax import output_files

DEFAULT_TEMPLATE = "Describe an image of: {prompt}"
GRID_NAME = "grid.png"
JSONL_NAME = "samples.jsonl"


def check_integer(value: Any, name: str) -> None:
  """A TypeError naming `name` unless `value` is an int (numpy integers too, bool not): else 2.5
  images per prompt fail deep in jax.jit, a float seed as 'got JitTracer', and 3.5 new tokens
  are cut to 3."""
  if cli.as_int(value) is None:
    raise TypeError(f"{name}={value!r} is a {type(value).__name__}; pass an int.")


def check_prompts(prompts: Sequence[str] | str) -> list[str]:
  """The prompts as a list; ValueError for no prompts or an empty (whitespace-only) one."""
  if isinstance(prompts, str):
    prompts = [prompts]
  prompts = list(prompts)
  if not prompts:
    raise ValueError("No prompts given; pass at least one non-empty prompt.")
  for i, p in enumerate(prompts):
    # Counted from 1 (the 2nd --prompt, prompts[1]: "Prompt #2 of 3").
    named = "The prompt" if len(prompts) == 1 else f"Prompt #{i + 1} of {len(prompts)}"
    if not isinstance(p, str):
      raise TypeError(f"{named} is a {type(p).__name__}, not a str: {p!r:.80}")
    if not p.strip():
      raise ValueError(f"{named} is empty; give every prompt some text (an empty prompt "
                       "would condition the generator on padding only).")
    try:
      p.encode("utf-8")
    except UnicodeEncodeError:  # e.g. Latin-1 bytes from a shell, decoded as surrogates
      raise ValueError(f"{named} is not valid UTF-8 text ({p!r:.80}); set the terminal's "
                       "encoding to UTF-8, or use a UTF-8 --prompts_file.") from None
  return prompts


def check_sample_args(num_per_prompt: int, seed: int, truncation: float | None, flag: str = ""
                      ) -> float | None:
  """The truncation as a float, or a ValueError (TypeError for a count or seed that is not an int)
  naming the first bad value (with `flag` "--", as sample.py's flag)."""
  for name, value in (("num_per_prompt", num_per_prompt), ("seed", seed)):
    check_integer(value, f"{flag}{name}")
  if num_per_prompt < 1:
    raise ValueError(f"{flag}num_per_prompt={num_per_prompt} must be >= 1.")
  if not 0 <= seed < 2**32:
    raise ValueError(f"{flag}seed={seed} must be in [0, 2**32).")
  # The noise's float32 multiplier: inf draws black images, 0 (e.g. 1e-46) one image per prompt.
  if truncation is not None and not cli.FLOAT32_TINY <= float(truncation) <= cli.FLOAT32_MAX:
    raise ValueError(f"{flag}truncation={truncation} must be from {cli.FLOAT32_TINY:g} to "
                     f"{cli.FLOAT32_MAX:g} (a float32 > 0; e.g. 0.88); leave it unset for none.")
  return None if truncation is None else float(truncation)


def check_template(template: str) -> None:
  """A str.format template whose fields are all exactly {prompt} (conversions and format specs
  allowed, e.g. {prompt!r}); ValueError otherwise."""
  try:
    template.encode("utf-8")
  except UnicodeEncodeError:  # e.g. Latin-1 bytes from a shell, decoded as surrogates
    raise ValueError(f"Expansion template {template!r} is not valid UTF-8 text; set the "
                     "terminal's encoding to UTF-8.") from None
  try:
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
  except ValueError as e:
    raise ValueError(f"Expansion template {template!r} is not a valid format string ({e}); "
                     "use {prompt} for the prompt and {{ }} for literal braces.") from None
  if other := [f for f in fields if f != "prompt"]:
    raise ValueError(f"Expansion template {template!r} has the field(s) {other}; the only field "
                     "is {prompt} (the whole prompt), and {{ }} are literal braces.")
  if not fields:
    raise ValueError(f"Expansion template {template!r} has no {{prompt}} placeholder; e.g. "
                     f"{DEFAULT_TEMPLATE!r}.")
  try:  # a conversion or format spec str.format refuses for a str (e.g. {prompt!x}, {prompt:d})
    template.format(prompt="a prompt")
  except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
    raise ValueError(f"Expansion template {template!r} cannot format a prompt ({e}); write the "
                     "placeholder as {prompt}.") from None


def _sampling_options_set(temperature: float, top_p: float, prefix: str) -> list[str]:
  """The sampling options given values other than 1.0 (CaptionExpander's and sample.py's default),
  each named with `prefix` ("--expand_": sample.py's flags; "": CaptionExpander's fields)."""
  return [f"{prefix}{name}={value}" for name, value in
          (("temperature", temperature), ("top_p", top_p)) if value != 1.0]


def check_options(template: str, max_new_tokens: int, num_beams: int, do_sample: bool,
                  temperature: float, top_p: float, flag: str = "CaptionExpander ") -> None:
  """CaptionExpander's options (ValueError if one is bad; TypeError for a count that is not an
  int), to check before a model loads; named with `flag` ("--expand_": as sample.py's flags;
  "CaptionExpander ": as its arguments, 'CaptionExpander max_new_tokens=0', and bare where
  several are named together, 'pass do_sample=True')."""
  check_template(template)
  for name, value in (("max_new_tokens", max_new_tokens), ("num_beams", num_beams)):
    check_integer(value, f"{flag}{name}")
  if max_new_tokens < 1:
    raise ValueError(f"{flag}max_new_tokens={max_new_tokens} must be >= 1.")
  if num_beams < 1:
    raise ValueError(f"{flag}num_beams={num_beams} must be >= 1.")
  # The options together: sample.py names its flags, CaptionExpander its fields (as arguments).
  on_cli = flag.startswith("--")
  prefix = flag if on_cli else ""
  if not do_sample and (ignored := _sampling_options_set(temperature, top_p, prefix)):
    do = f"{flag}do_sample" if on_cli else "do_sample=True"
    raise ValueError(f"{cli.only_apply(ignored)} when sampling expansions; pass {do}, or drop "
                     f"{cli.them(ignored)} for greedy or beam-search expansion.")
  if do_sample and num_beams > 1:
    sample, beams, what = ((f"{flag}do_sample", f"{flag}num_beams={num_beams}", "flags")
                           if on_cli else ("do_sample", "num_beams > 1", "options"))
    raise ValueError(f"Caption expansion samples ({sample}) or beam-searches ({beams}), not both; "
                     f"drop one of the two {what}.")
  if do_sample and not (cli.temperature_ok(temperature) and 0 < top_p <= 1):
    raise ValueError(f"Sampled expansion needs {prefix}temperature {cli.TEMPERATURES} "
                     f"(lower is greedy) and 0 < {prefix}top_p <= 1; got {temperature} and "
                     f"{top_p}.")


# outputs.image_name's names (more digits past 9999 prompts or 999 samples), and no others: the
# glob p[0-9]*_s[0-9]*.png also matched a user's p0000_s001_favorite.png, which --overwrite deleted.
_IMAGE_NAME = re.compile(r"p[0-9]{4,}_s[0-9]{3,}\.png")


def _named_outputs(out: Path) -> list[Path]:
  """The entries of `out` named as write_samples' outputs (links to nothing too), sorted."""
  if not out.is_dir():
    return []
  return sorted(p for p in out.iterdir()
                if p.name in (GRID_NAME, JSONL_NAME) or _IMAGE_NAME.fullmatch(p.name))


def old_outputs(out: Path) -> list[Path]:
  """What an earlier write_samples left in `out` (a grid or index linked to nothing is not)."""
  return [p for p in _named_outputs(out) if _IMAGE_NAME.fullmatch(p.name) or p.exists()]


def check_out_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> None:
  """Raises if `write_samples` could not create or write `out_dir`, or (unless `overwrite`) if
  it holds an earlier run's samples (checked before sampling)."""
  if not str(out_dir).strip():
    raise ValueError("The output directory is empty (--out=''); name a directory for the images.")
  out = output_files.flag_path(out_dir, "--out")
  chain = (out, *out.parents)
  existing = next(p for p in chain if p.exists())
  # A link to a missing target (an unmounted disk) does not exist, yet mkdir cannot create it:
  # found only after sampling, as "[Errno 17] File exists".
  if link := next((p for p in chain[:chain.index(existing)] if p.is_symlink()), None):
    linked = f"Output {out_dir!r}: {link} is a symbolic link to {os.readlink(link)}"
    if output_files.leads_to_itself(link):
      raise OSError(f"{linked}, which leads back to itself (a loop); pass another --out.")
    raise FileNotFoundError(f"{linked}, which does not exist; create that directory (or mount "
                            "its disk), or pass another --out.")
  if not existing.is_dir():
    raise NotADirectoryError(f"Output {out_dir!r}: {existing} is a file; pass a directory for "
                             "the images (it is created if missing).")
  if problem := output_files.cannot_write(existing):
    raise PermissionError(f"Output {out_dir!r}: {existing} is not writable ({problem}); pass a "
                          "directory you can write to.")
  # An output that is a link is written through to its target (outputs.write_samples): into a
  # missing or unwritable folder, or to a folder, that failed only after sampling (the earlier
  # outputs gone); a pipe or a device was replaced by a file.
  for link in filter(Path.is_symlink, _named_outputs(out)):
    linked = f"Output {out_dir!r}: {link} is a symbolic link to {os.readlink(link)}"
    # A loop would pass the checks below: realpath leaves it unresolved, the link itself in --out.
    if output_files.leads_to_itself(link):
      raise OSError(f"{linked}, which leads back to itself (a loop); point it at a file, or "
                    "remove the link.")
    if os.path.isdir(target := os.path.realpath(link)):
      raise IsADirectoryError(f"{linked}, a folder; point it at a file, or remove the link.")
    if os.path.exists(link) and not os.path.isfile(link):  # e.g. /dev/null: replaced, as root
      raise OSError(f"{linked}, which is not a regular file (a pipe, a device or a socket); point "
                    "it at a file, or remove the link.")
    if not os.path.isdir(folder := os.path.dirname(target)):
      raise FileNotFoundError(f"{linked}, whose folder {folder} does not exist; create that "
                              "directory (or mount its disk), or remove the link.")
    if problem := output_files.cannot_write(folder):
      raise PermissionError(f"{linked}, whose folder {folder} is not writable ({problem}); point "
                            "it into a folder you can write to, or remove the link.")
  old = old_outputs(out)
  if old and not overwrite:
    raise FileExistsError(
        f"Output '{out}' already holds samples ({len(old)} files, e.g. {old[0].name}); pass "
        "a new directory, or --overwrite to replace them (new and old images would "
        "otherwise mix, and samples.jsonl would describe only the new ones).")


def check_out_outside_data(out_dir: str | os.PathLike, workdir: str | os.PathLike) -> None:
  """A ValueError for an `out_dir` inside the training images of the run in `workdir` (a
  captioned_folder's config.data.folder, as WORKDIR/config.json names it): its PNGs would be
  images added to the folder, and the run's next resume would report the folder changed since its
  build. Nothing is checked where config.json is unreadable (sampling reports that run)."""
  try:
    data = json.loads((output_files.flag_path(workdir, "--workdir") / "config.json").read_text(
        encoding="utf-8"))["data"]
    inside = output_files.in_training_folder(output_files.flag_path(out_dir, "--out"), data)
  except (OSError, ValueError, KeyError, TypeError, AttributeError):  # no readable data section
    return
  if inside:
    raise ValueError(f"Output {str(out_dir)!r} is inside the run's training images "
                     f"(config.data.folder={str(data['folder'])!r}): its PNGs would be images "
                     "added to the folder, whose build the run's next resume reports as changed; "
                     "pass an --out outside it, e.g. samples/NAME.")


def read_prompts(prompts: Sequence[str] | str = (), prompts_file: str | os.PathLike | None = None
                 ) -> list[str]:
  """`prompts`, then one prompt per non-blank line of `prompts_file` (UTF-8; '#' lines skipped)."""
  prompts = [prompts] if isinstance(prompts, str) else list(prompts)  # not one per character
  if prompts_file is not None and not str(prompts_file).strip():  # e.g. "$FILE" unset
    raise ValueError(f"The prompts file name is blank (--prompts_file={str(prompts_file)!r}); "
                     "name a UTF-8 text file with one prompt per line, or drop the flag.")
  if prompts_file:
    path = output_files.flag_path(prompts_file, "--prompts_file")
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
    # A BOM opening a line (files with BOMs concatenated: `cat a.txt b.txt`) is no text; kept,
    # it made a '#' line a prompt. (str.strip leaves it: U+FEFF is not whitespace.)
    from_file = [line.strip().lstrip("\ufeff").strip() for line in lines]
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
