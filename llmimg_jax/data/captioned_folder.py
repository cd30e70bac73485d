"""`captioned_folder`: a TFDS dataset from a folder of images and `captions.jsonl`/`captions.csv`.

captions.jsonl has one JSON object per line, e.g. `{"file": "cat.jpg", "caption": "a cat"}` or
`{"file_name": "cat.jpg", "captions": ["a cat", "a grey cat"]}`; several lines for one file (and
every caption key of a line) are merged, each caption once. captions.csv has a header with a file
column (file/file_name/filename/image, any case) and a caption column (caption/text/captions); a
caption column that comes last may hold unquoted commas (counted as a note). File names are
relative to the folder (or absolute paths inside it) and match the names on disk after Unicode NFC
normalisation (macOS may write `café.png` decomposed, as NFD). Bad lines and bad images are
skipped and counted by reason; the summary is logged, stored in the dataset's metadata.json and
returned by `build_folder`.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import unicodedata

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from llmimg_jax.data import images
from llmimg_jax.data.tfds_utils import LocalCodePathMixin

log = logging.getLogger(__name__)

FILE_KEYS = ("file", "file_name", "filename", "image")
CAPTION_KEYS = ("caption", "captions", "text")
CAPTION_FILES = ("captions.jsonl", "captions.csv")
_MAX_EXAMPLES_PER_REASON = 5


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
  folder: str = ""
  image_size: int = 64
  max_pixels: int = 0  # 0 -> PIL's Image.MAX_IMAGE_PIXELS


def folder_config(folder: str, image_size: int, max_pixels: int = 0) -> FolderConfig:
  """The config for `folder` at `image_size`; its name is stable for the same absolute path (and
  `max_pixels`), so a run resumes on the build it started with even if the folder changes since
  (`warn_if_changed` says so)."""
  if not folder:
    raise ValueError("captioned_folder needs a source folder: set data.folder (or --folder).")
  folder = os.path.abspath(os.path.expanduser(folder))
  slug = re.sub(r"[^a-z0-9]+", "_", os.path.basename(folder.rstrip("/")).lower()).strip("_")
  key = folder + (f"\0{max_pixels}" if max_pixels else "")
  digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:8]
  return FolderConfig(name=f"{slug or 'folder'}_{image_size}_{digest}", folder=folder,
                      image_size=image_size, max_pixels=max_pixels,
                      description=f"Images of {folder} at {image_size}px.")


def fingerprint(folder: str) -> str:
  """A hash of what a build reads: the captions files' bytes and the name, size and mtime of
  every image file (symlinks followed; unreadable entries hashed as such)."""
  digest = hashlib.sha1()
  for name in CAPTION_FILES:
    try:
      with open(os.path.join(folder, name), "rb") as f:
        digest.update(name.encode() + b"\0" + hashlib.sha1(f.read()).digest())
    except OSError:
      digest.update(name.encode() + b"\0-")
  for root, dirs, files in os.walk(folder, followlinks=True):
    dirs.sort()
    for f in sorted(files):
      if os.path.splitext(f)[1].lower() not in images.IMAGE_EXTENSIONS:
        continue  # only image files: a TFDS data_dir inside the folder does not count
      path = os.path.join(root, f)
      try:
        stat = os.stat(path)
        entry = f"{os.path.relpath(path, folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
      except OSError:
        entry = f"{os.path.relpath(path, folder)}\0-\n"
      digest.update(entry.encode("utf-8", "surrogateescape"))
  return digest.hexdigest()


def warn_if_changed(builder: "CaptionedFolder") -> bool:
  """Logs a warning (and returns True) if the folder changed since `builder`'s build."""
  built = dict((builder.info.metadata or {}).get("summary") or {}).get("fingerprint")
  folder = builder.builder_config.folder
  if not os.path.isdir(folder):
    log.info("captioned_folder: %s is gone; reading its build in %s.", folder, builder.data_dir)
    return False
  if built is None or built == fingerprint(folder):
    return False
  log.warning(
      "captioned_folder: %s changed since it was built into %s (captions or images added, "
      "removed or modified); training and evaluation read that build. To use the new contents, "
      "delete that directory; a run started on the old build then cannot resume its data "
      "position, so give it a new --workdir.", folder, builder.data_dir)
  return True


class _Skips:
  """Skip counts by reason, with a few examples of each."""

  def __init__(self):
    self.counts = collections.Counter()
    self.examples = collections.defaultdict(list)

  def add(self, reason: str, what: str) -> None:
    self.counts[reason] += 1
    if len(self.examples[reason]) < _MAX_EXAMPLES_PER_REASON:
      self.examples[reason].append(what)


def _relative_name(folder: str, name: str) -> str | None:
  """`name` (relative to `folder`, or absolute) relative to `folder`; None if it is outside.

  An absolute name may reach the folder through another path to it (a symlink); a file inside
  the folder may itself be a symlink to anywhere."""
  path = os.path.normpath(os.path.join(folder, name))
  for root, p in ((folder, path), (os.path.realpath(folder), os.path.realpath(path))):
    rel = os.path.relpath(p, root)
    if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
      return rel
  return None


class _DiskNames:
  """Names in captions files -> the names on disk, compared after Unicode NFC normalisation."""

  def __init__(self, folder: str):
    self.folder = folder
    self._listings: dict[str, dict[str, list[str]]] = {}

  def _listing(self, directory: str) -> dict[str, list[str]]:
    """NFC name -> the entries of `directory` with that name (more than one: an ambiguity)."""
    if directory not in self._listings:
      by_nfc = collections.defaultdict(list)
      try:
        for entry in sorted(os.listdir(directory)):
          by_nfc[unicodedata.normalize("NFC", entry)].append(entry)
      except OSError:
        pass
      self._listings[directory] = dict(by_nfc)
    return self._listings[directory]

  def resolve(self, rel: str, where: str) -> str | None:
    """The on-disk spelling of the file `rel` (relative to the folder); None if it is no file."""
    parts: list[str] = []
    for part in rel.split(os.sep):
      directory = os.path.join(self.folder, *parts)
      matches = self._listing(directory).get(unicodedata.normalize("NFC", part), [])
      if len(matches) > 1:
        raise FolderError(
            f"{where} names {part!r}, but {directory} holds {len(matches)} entries with that name "
            f"in different Unicode forms: {', '.join(ascii(m) for m in matches)}. Rename or "
            "remove all but one of them.")
      parts.append(matches[0] if matches else part)  # none: a case-insensitive disk may find it
    rel = os.path.join(*parts)
    return rel if os.path.isfile(os.path.join(self.folder, rel)) else None


def _add_caption_entry(names: _DiskNames, where, file_name, captions, out, skips) -> None:
  if not isinstance(file_name, str) or not file_name.strip():
    skips.add("missing_key", where)
    return
  if isinstance(captions, str):
    captions = [captions]
  if not isinstance(captions, list):
    skips.add("missing_key", where)
    return
  # Undecodable CSV bytes (surrogate-escaped) or a JSON "\ud83d" escape (half an emoji): not
  # UTF-8, so TFDS could not write them.
  if any(_has_surrogates(v) for v in (file_name, *captions) if isinstance(v, str)):
    skips.add("invalid_utf8", where)
    return
  rel = _relative_name(names.folder, file_name.strip())
  if rel is None:
    skips.add("outside_folder", f"{where} ({file_name})")
    return
  rel = names.resolve(rel, where)
  if rel is None:
    skips.add("unknown_file", f"{where} ({file_name})")
    return
  named = out[rel]  # named even if this line's captions are blank: not also "no_caption"
  captions = [c.strip() for c in captions if isinstance(c, str) and c.strip()]
  if not captions:
    skips.add("empty_caption", where)
    return
  named.extend(c for c in dict.fromkeys(captions) if c not in named)


def _first(obj: dict, keys) -> object:
  return next((obj[k] for k in keys if k in obj), None)


class FolderError(ValueError):
  """A folder that cannot make a dataset (no captions file, an unreadable one, no usable image);
  the message names the file and the fix."""


def check_caption_files(folder: str) -> None:
  """What can be refused without reading the images: raises FolderError (seconds, not a build)."""
  paths = [os.path.join(folder, f) for f in CAPTION_FILES]
  if not any(os.path.isfile(p) for p in paths):
    raise FolderError(
        f"No captions file in {folder}: add captions.jsonl (one JSON object per line, e.g. "
        '{"file": "a.jpg", "caption": "..."}) or captions.csv (columns file,caption).')
  for path in paths:
    _refuse_utf16(path)
  if os.path.isfile(paths[0]):
    _refuse_json_array(paths[0])
  if os.path.isfile(paths[1]):  # its header record (a quoted cell may hold a line break)
    with open(paths[1], encoding="utf-8", errors="surrogateescape", newline="") as f:
      _csv_columns(paths[1], f.read(1 << 16))


def _refuse_json_array(jsonl_path: str) -> None:
  """One JSON array of objects (what `json.dump(list)` writes) is not JSON Lines: say so."""
  with open(jsonl_path, "rb") as f:
    if not f.read(1 << 16).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
      return
    f.seek(0)
    try:
      obj = json.loads(f.read().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError):
      return  # a line-by-line problem; the build counts it
  if isinstance(obj, list):
    raise FolderError(
        f"{jsonl_path} is one JSON array; captions.jsonl needs one JSON object per line "
        "(JSON Lines), e.g. write it with `for e in entries: f.write(json.dumps(e) + '\\n')`.")


def _csv_columns(csv_path: str, text: str) -> tuple[csv.DictReader, str, str]:
  """The reader of a captions.csv's text and its file and caption columns."""
  reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""))
  fields = reader.fieldnames or []
  by_name: dict[str, str] = {}  # "File Name " reads as file_name; the first such column wins
  for f in fields:
    by_name.setdefault(f.strip().lower().replace(" ", "_"), f)
  file_col = next((by_name[k] for k in FILE_KEYS if k in by_name), None)
  cap_col = next((by_name[k] for k in CAPTION_KEYS if k in by_name), None)
  if file_col is None or cap_col is None:
    raise FolderError(f"{csv_path}: header {fields} needs a file column (one of {FILE_KEYS}) "
                      f"and a caption column (one of {CAPTION_KEYS}).{_delimiter_hint(fields)}")
  return reader, file_col, cap_col


_OTHER_DELIMITERS = {";": "semicolons", "\t": "tabs", "|": "bars"}


def _delimiter_hint(fields: list[str]) -> str:
  """For a one-column header split by another delimiter (a European Excel's ';', a TSV's tab):
  what to change. Empty otherwise."""
  if len(fields) != 1:
    return ""
  for delimiter, name in _OTHER_DELIMITERS.items():
    cells = [c.strip().lower().replace(" ", "_") for c in fields[0].split(delimiter)]
    if any(c in FILE_KEYS for c in cells) and any(c in CAPTION_KEYS for c in cells):
      return (f" Its columns are separated by {name}; captions.csv needs commas (save it as "
              "\"CSV UTF-8 (Comma delimited)\", or write it with Python's csv module).")
  return ""


def read_captions(folder: str, skips: _Skips, notes: _Skips | None = None
                  ) -> dict[str, list[str]]:
  """File name (relative to `folder`) -> captions, from captions.jsonl and/or captions.csv.

  Each caption once per file; a file named only with blank captions maps to []."""
  out: dict[str, list[str]] = collections.defaultdict(list)
  check_caption_files(folder)
  names = _DiskNames(folder)
  jsonl, csv_path = [os.path.join(folder, f) for f in CAPTION_FILES]
  if os.path.isfile(jsonl):
    with open(jsonl, "rb") as f:
      for n, raw in enumerate(f, start=1):
        where = f"captions.jsonl:{n}"
        if not raw.strip():
          continue
        try:
          line = raw.decode("utf-8-sig" if n == 1 else "utf-8")  # a BOM, as some editors write
        except UnicodeDecodeError:
          skips.add("invalid_utf8", where)
          continue
        try:
          obj = json.loads(line)
        except json.JSONDecodeError:
          skips.add("invalid_json", where)
          continue
        if not isinstance(obj, dict):
          skips.add("invalid_json", where)
          continue
        file_name = _first(obj, FILE_KEYS)
        captions = [  # every caption key's (_add_caption_entry keeps each caption once)
            c for k in CAPTION_KEYS if k in obj
            for c in (obj[k] if isinstance(obj[k], list) else [obj[k]]) if isinstance(c, str)]
        if file_name is None or not any(k in obj for k in CAPTION_KEYS):
          skips.add("missing_key", where)
          continue
        _add_caption_entry(names, where, file_name, captions, out, skips)
  if os.path.isfile(csv_path):
    with open(csv_path, "rb") as f:
      text = f.read().decode("utf-8", errors="surrogateescape")
    reader, file_col, cap_col = _csv_columns(csv_path, text)
    last = reader.fieldnames[-1] == cap_col
    for row in reader:
      where = f"captions.csv:{reader.line_num}"  # the record's last line (quotes may span lines)
      caption, extra = row.get(cap_col) or "", row.get(None)
      if extra:  # more cells than the header: an unquoted comma
        if not last:  # which cells are the caption's is unknown
          skips.add("extra_csv_cells", where)
          continue
        caption = ",".join([caption, *extra])  # the caption is the last column: its own commas
        if notes is not None:
          notes.add("unquoted_csv_comma", where)
      _add_caption_entry(names, where, row.get(file_col), caption, out, skips)
  return dict(out)


def _refuse_utf16(path: str) -> None:
  """A UTF-16 file (Excel's "Unicode text") would read as garbage lines; say so instead."""
  if os.path.isfile(path):
    with open(path, "rb") as f:
      if f.read(2) in (b"\xff\xfe", b"\xfe\xff"):
        raise FolderError(f"{path} is UTF-16 text; save it as UTF-8 (e.g. Excel's \"CSV UTF-8\").")


def _has_surrogates(s: str) -> bool:
  return any("\ud800" <= ch <= "\udfff" for ch in s)


class CaptionedFolder(LocalCodePathMixin, tfds.core.GeneratorBasedBuilder):
  """Your own images and captions. Pass `config=folder_config(folder, image_size)`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    if not isinstance(kwargs.get("config"), FolderConfig):
      raise ValueError("captioned_folder needs config=folder_config(folder, image_size) "
                       f"(got config={kwargs.get('config')!r}).")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8,
                                           encoding=tfds.features.Encoding.BYTES),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "file_name": tfds.features.Text(),
            "index": tfds.features.Scalar(dtype=np.int64),
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    if not os.path.isdir(cfg.folder):
      raise FileNotFoundError(f"captioned_folder: source folder {cfg.folder} does not exist; "
                              "set data.folder (or --folder) to a folder of images.")
    return {"train": self._generate_examples(cfg.folder)}

  def _generate_examples(self, folder: str):
    cfg = self.builder_config
    line_skips, image_skips, notes = _Skips(), _Skips(), _Skips()
    folder_fingerprint = fingerprint(folder)  # before reading: what this build saw
    captions = read_captions(folder, line_skips, notes)
    for root, _, files in os.walk(folder):
      for f in files:
        rel = os.path.relpath(os.path.join(root, f), folder)
        if os.path.splitext(f)[1].lower() in images.IMAGE_EXTENSIONS and rel not in captions:
          image_skips.add("no_caption", rel)
    index = 0
    captioned = sorted(rel for rel, caps in captions.items() if caps)
    for rel in tqdm.tqdm(captioned, desc=f"captioned_folder {folder}", unit="img"):
      try:
        image, image_notes = images.load_image(
            os.path.join(folder, rel), cfg.image_size, cfg.max_pixels or None)
      except images.SkipImage as e:
        image_skips.add(e.reason, rel)
        continue
      for note in image_notes:
        notes.add(note, rel)
      yield rel, {"image": image, "captions": captions[rel], "file_name": rel, "index": index}
      index += 1
    skipped = line_skips.counts + image_skips.counts
    summary = {
        "folder": folder, "fingerprint": folder_fingerprint, "num_examples": index,
        "skipped_lines": line_skips.counts.total(), "skipped_images": image_skips.counts.total(),
        "skipped": dict(sorted(skipped.items())),
        "skipped_examples": {k: (line_skips.examples[k] + image_skips.examples[k])[
            :_MAX_EXAMPLES_PER_REASON] for k in sorted(skipped)},
        "notes": dict(sorted(notes.counts.items())),
    }
    self.info.metadata["summary"] = summary
    log_fn = log.warning if skipped else log.info
    log_fn("captioned_folder %s: %d examples; skipped %d caption lines and %d images: %s; "
           "notes: %s", folder, index, summary["skipped_lines"], summary["skipped_images"],
           summary["skipped"] or "none", summary["notes"] or "none")
    if index == 0:
      raise FolderError(f"captioned_folder: no usable image in {folder} (skipped: "
                        f"{summary['skipped']}). {_advice(line_skips, image_skips, captioned)}")


_ADVICE = {
    "unknown_file": "Check the file names in the captions file: they are relative to the folder.",
    "outside_folder": "The captions file names files outside the folder; move them into it.",
    "invalid_json": "Each line of captions.jsonl must be one JSON object.",
    "missing_key": f"Each caption line needs a file key (one of {FILE_KEYS}) and a caption key "
                   f"(one of {CAPTION_KEYS}).",
    "empty_caption": "Every caption is blank; write a caption for each image.",
    "invalid_utf8": "Save the captions file as UTF-8.",
    "extra_csv_cells": "Quote the captions that contain commas, or make the caption column last.",
}


def _advice(line_skips: _Skips, image_skips: _Skips, captioned: list[str]) -> str:
  """What to fix when no example was made: the images if captions named some, else the lines."""
  if captioned:
    reason = max(set(image_skips.counts) - {"no_caption"}, key=image_skips.counts.get)
    return (f"None of the captioned images could be read ({reason}, e.g. "
            f"{image_skips.examples[reason][0]}).")
  if not line_skips.counts:
    return ("The captions file names no image. Add a line per image, e.g. "
            '{"file": "a.jpg", "caption": "..."}.')
  reason = line_skips.counts.most_common(1)[0][0]
  return f"{_ADVICE[reason]} E.g. {line_skips.examples[reason][0]}."


def build_folder(folder: str, data_dir: str, image_size: int,
                 max_pixels: int = 0) -> tuple[CaptionedFolder, dict]:
  """Builds (if needed) the dataset of `folder`; returns (builder, skip summary)."""
  builder = CaptionedFolder(config=folder_config(folder, image_size, max_pixels),
                            data_dir=data_dir)
  builder.download_and_prepare()
  return builder, summary_of(builder)


def summary_of(builder: CaptionedFolder) -> dict:
  """The build summary stored in the dataset's metadata.json."""
  meta = builder.info.metadata
  if meta is None or "summary" not in meta:
    raise ValueError(f"No build summary in {builder.data_dir}/metadata.json.")
  return dict(meta["summary"])
