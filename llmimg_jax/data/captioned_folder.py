"""`captioned_folder`: a TFDS dataset from a folder of images and `captions.jsonl`/`captions.csv`
(their format: `caption_files`). Bad caption lines and bad images are skipped and counted by
reason; the summary is logged, stored in the dataset's metadata.json and returned by
`build_folder`.
"""
from __future__ import annotations

import csv
import dataclasses
import errno
import functools
import hashlib
import logging
import os
import re
from collections.abc import Callable, Mapping

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from llmimg_jax import cli
from llmimg_jax.data import caption_files, images
from llmimg_jax.data.caption_files import (CAPTION_FILES, CAPTION_KEYS, FILE_KEYS,
                                           MAX_EXAMPLES_PER_REASON, FolderError, Skips,
                                           read_captions)
from llmimg_jax.data.folder_names import listed, walk_files
from llmimg_jax.data.tfds_utils import (DeadBuildsMixin, LocalCodePathMixin, LocalDatasetInfo,
                                        delete_command)

log = logging.getLogger(__name__)


# TFDS (through absl) warns "Using custom data configuration: FolderConfig(...)" whenever a builder
# is made with a config it does not list; a folder's config (`folder_config`) always is one.
cli.drop_log_records(
    "absl", lambda text: text.startswith("Using custom data configuration: FolderConfig("))


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
    # Named as the data config's key, as pipeline's checks are: prepare names it as --folder.
    raise ValueError("captioned_folder needs a source folder: set data.folder.")
  folder = os.path.abspath(os.path.expanduser(folder))
  slug = re.sub(r"[^a-z0-9]+", "_", os.path.basename(folder.rstrip("/")).lower()).strip("_")
  key = folder + (f"\0{max_pixels}" if max_pixels else "")
  digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:8]
  suffix = f"_{image_size}_{digest}"
  slug = (slug or "folder")[:255 - len(suffix)]  # the build's folder name: <= 255 bytes
  return FolderConfig(name=slug + suffix, folder=folder,
                      image_size=image_size, max_pixels=max_pixels,
                      description=f"Images of {folder} at {image_size}px.")


# How `fingerprint` picks a folder's files; a build records it (summary["fingerprint_version"];
# none: 1). 1: every image file, in hidden folders and `._NAME` files too; 2: those a build reads.
FINGERPRINT_VERSION = 2


def fingerprint(folder: str, extensions: frozenset[str] = images.IMAGE_EXTENSIONS,
                version: int = FINGERPRINT_VERSION,
                captions: Callable[[], Mapping[str, list[str]]] | None = None) -> str:
  """A hash of what a build reads: the captions files' bytes and the name, size and mtime of each
  image file (one of `extensions`) it lists (`listed`) or the captions name (symlinks followed,
  but not round a loop; unreadable entries hashed as such). `version` 1: of every image file, as
  builds before FINGERPRINT_VERSION 2 hashed (emptying a .Trash-1000/ "changed" them).
  `captions`: returns the folder's read_captions (default `_captions`); called after the
  captions files are hashed, only if an image file is not `listed`."""
  digest = hashlib.sha1()
  for name in CAPTION_FILES:
    path, read = os.path.join(folder, name), b"-"  # none, or no file (a FIFO's read would block)
    try:
      if os.path.isfile(path):
        with open(path, "rb") as f:  # in chunks: not a 1 GB file in memory at every load
          read = hashlib.file_digest(f, "sha1").digest()
    except OSError:
      pass
    digest.update(name.encode() + b"\0" + read)
  # Image files only: a TFDS data_dir inside does not count.
  rels = [os.path.relpath(path, folder) for path in walk_files(folder)
          if os.path.splitext(path)[1].lower() in extensions]
  if version >= 2 and not all(map(listed, rels)):  # the captions read only then
    named = {rel for rel, caps in (captions or functools.partial(_captions, folder))().items()
             if caps}
    rels = [rel for rel in rels if listed(rel) or rel in named]
  for rel in rels:
    try:
      stat = os.stat(os.path.join(folder, rel))
      entry = f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
    except OSError:
      entry = f"{rel}\0-\n"
    digest.update(entry.encode("utf-8", "surrogateescape"))
  return digest.hexdigest()


def _captions(folder: str) -> dict[str, list[str]]:
  """read_captions of `folder`; none if a build would fail on its captions files."""
  try:
    return read_captions(folder, Skips())
  except (OSError, ValueError, csv.Error):  # FolderError is a ValueError
    return {}


def _real_paths() -> Callable[[str], str]:
  """os.path.realpath, each folder's found once: a file's own then takes one lstat (if it is no
  link) instead of one per part of its path (2.0 s for 100k files in /tmp/x/photos/)."""
  real_dir = functools.cache(os.path.realpath)

  def real(path: str) -> str:
    directory, name = os.path.split(path)
    path = os.path.join(real_dir(directory), name)
    return os.path.realpath(path) if os.path.islink(path) else path
  return real


_WARNED: set[tuple] = set()  # (build, decoder, its fingerprint, the folder's): said once


def warn_if_changed(builder: "CaptionedFolder") -> bool:
  """Logs a warning (and returns True) if `builder`'s build was made by an older image decoder
  (`images.DECODER_VERSION`: other pixels for some files) or captions.csv reader
  (`caption_files.READER_VERSION`: other captions), or the folder changed since. Each warning is
  logged once per process (evaluate.py loads a source twice), until the folder changes again."""
  summary = dict((builder.info.metadata or {}).get("summary") or {})
  built, decoder = summary.get("fingerprint"), summary.get("decoder", 1)
  folder = builder.builder_config.folder
  # An older decoder read (and fingerprinted) fewer extensions, e.g. decoder 1 no .avif/.heic:
  # an unchanged folder holding such files is not "changed".
  current = (fingerprint(folder, images.extensions_of(decoder),
                         summary.get("fingerprint_version", 1))
             if os.path.isdir(folder) else None)
  key = (str(builder.data_dir), decoder, built, current)
  first = key not in _WARNED
  _WARNED.add(key)
  readers = [("image decoder", decoder, images.DECODER_VERSION, _decoder_changes(decoder))]
  if os.path.isfile(os.path.join(folder, "captions.csv")):  # what the reader's versions changed
    reader = summary.get("captions_reader", 1)
    readers.append(("captions.csv reader", reader, caption_files.READER_VERSION,
                    _changes_after(caption_files.READER_CHANGES, reader)))
  older = False
  for what, version, now, changes in readers:
    if summary and version < now:
      older = True
      if first:
        log.warning("captioned_folder: %s was built by an older %s (version %d, now %d: %s); "
                    "training and evaluation read that build as it is. To rebuild it, %s",
                    builder.data_dir, what, version, now, changes, _delete_the_build(builder))
  if current is None:
    if first:
      log.info("captioned_folder: %s is gone; reading its build in %s.", folder, builder.data_dir)
    return older
  if built is None or built == current:
    return older
  if first:
    log.warning(
        "captioned_folder: %s changed since it was built into %s (captions or images added, "
        "removed or modified); training and evaluation read that build. To use the new "
        "contents, %s", folder, builder.data_dir, _delete_the_build(builder))
  return True


# What each images.DECODER_VERSION changed; a build's warning names those after its version.
_DECODER_CHANGES = {
    2: "ICC colour profiles (Adobe RGB, Display P3, CMYK) are now converted to sRGB and "
       ".avif/.heic/.heif images read",
    3: "the transparent grey of 16-bit greyscale PNGs (tRNS) is now composited over white",
    4: ".jpe, .apng and .mpo images are now read",
    5: "the transparent colour of 16-bit RGB PNGs (tRNS) is now composited over white",
}


def _delete_the_build(builder: "CaptionedFolder") -> str:
  """How to delete `builder`'s build (not the folder of images, named in the same warning)."""
  return (f"delete that build ({delete_command(builder.data_dir)}); a run started on it then "
          "cannot resume its data position, so give it a new --workdir.")


def _changes_after(changes: dict[int, str], version: int) -> str:
  """What `changes` (version -> what it reads otherwise than the one before) name after
  `version`."""
  return "; ".join(c for v, c in sorted(changes.items()) if v > version)


def _decoder_changes(decoder: int) -> str:
  """What the current decoder reads otherwise than `decoder` did."""
  return (_changes_after(_DECODER_CHANGES, decoder) +
          ", so a new build differs if the folder holds such images")


class CaptionedFolder(DeadBuildsMixin, LocalCodePathMixin, tfds.core.GeneratorBasedBuilder):
  """Your own images and captions. Pass `config=folder_config(folder, image_size)`."""

  # Decoder changes are versioned in the build's summary (images.DECODER_VERSION; warn_if_changed
  # flags older builds), not here: a new VERSION is a new directory, so a run resuming on its
  # build would silently read a rebuild (other pixels, other indices) and a build whose folder
  # is gone would no longer be found.
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
    return LocalDatasetInfo(
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
    if not os.path.isdir(cfg.folder):  # gone since the config was checked
      raise FolderError(f"captioned_folder: source folder {cfg.folder} does not exist; set "
                        "data.folder to a folder of images.")
    self._remove_dead_builds()
    return {"train": self._generate_examples(cfg.folder)}

  def _generate_examples(self, folder: str):
    cfg = self.builder_config
    line_skips, image_skips, notes = Skips(), Skips(), Skips()
    # Parsed once, for the fingerprint (if it needs them) and the build.
    read = functools.cache(functools.partial(read_captions, folder, line_skips, notes))
    # Hashed before the images are read, and the captions (`read` runs after their bytes are
    # hashed): a change during the build is one since it.
    folder_fingerprint = fingerprint(folder, captions=read)
    captions = read()
    # Walked as the fingerprint is (linked folders too); a file captioned by another name of it
    # (a link to it, a linked folder inside this one) is not uncaptioned. The captioned files'
    # real paths are found once an image is not captioned by its own name.
    real, captioned_files = _real_paths(), None
    for path in walk_files(folder):
      rel = os.path.relpath(path, folder)
      if (os.path.splitext(path)[1].lower() in images.IMAGE_EXTENSIONS and listed(rel)
          and rel not in captions):
        if captioned_files is None:
          captioned_files = {real(os.path.join(folder, name)) for name in captions}
        if real(path) not in captioned_files:
          image_skips.add("no_caption", rel)
    index = 0
    captioned = sorted(rel for rel, caps in captions.items() if caps)
    decoded = images.load_images([os.path.join(folder, rel) for rel in captioned],
                                 cfg.image_size, cfg.max_pixels or None)
    for loaded, rel in zip(tqdm.tqdm(decoded, desc=f"captioned_folder {folder}",
                                     total=len(captioned), unit="img"), captioned):
      if isinstance(loaded, images.SkipImage):
        image_skips.add(loaded.reason, rel)
        continue
      image, image_notes = loaded
      for note in image_notes:
        notes.add(note, rel)
      yield rel, {"image": image, "captions": captions[rel], "file_name": rel, "index": index}
      index += 1
    _check_still_there(folder, index, len(captioned))
    skipped = line_skips.counts + image_skips.counts
    summary = {
        "folder": folder, "fingerprint": folder_fingerprint, "num_examples": index,
        "skipped_lines": line_skips.counts.total(), "skipped_images": image_skips.counts.total(),
        "skipped": dict(sorted(skipped.items())),
        "skipped_examples": {k: (line_skips.examples[k] + image_skips.examples[k])[
            :MAX_EXAMPLES_PER_REASON] for k in sorted(skipped)},
        "notes": dict(sorted(notes.counts.items())),
        "fixes": {k: v for k, v in _ADVICE.items() if k in skipped},
        "decoder": images.DECODER_VERSION, "fingerprint_version": FINGERPRINT_VERSION,
        "captions_reader": caption_files.READER_VERSION,
    }
    self.info.metadata["summary"] = summary
    log_fn = log.warning if skipped else log.info
    # self.data_dir is TFDS's temporary incomplete.*_VERSION folder while generating; the build
    # to delete is its sibling VERSION folder, which it is renamed to once complete.
    build_dir = os.path.join(os.path.dirname(os.path.normpath(self.data_dir)), str(self.version))
    log_fn("captioned_folder %s: %d examples; skipped %d caption lines and %d images: %s; "
           "notes: %s%s", folder, index, summary["skipped_lines"], summary["skipped_images"],
           summary["skipped"] or "none", summary["notes"] or "none",
           "".join(f". {fix.rstrip('.')}" for fix in summary["fixes"].values()) +
           (f"; then delete {build_dir} to rebuild" if summary["fixes"] else ""))
    if index == 0:
      raise FolderError(f"captioned_folder: no usable image in {folder} (skipped: "
                        f"{summary['skipped']}). "
                        f"{_advice(line_skips, image_skips, captioned, folder)}")


def _check_still_there(folder: str, read: int, captioned: int) -> None:
  """FolderError if `folder` was removed (or renamed) or made unreadable during its build: each
  image after that was skipped as unknown_file, and the build of the part read before would be
  kept as complete (TFDS removes its unfinished build on an error). A folder that cannot be
  listed (mode 711) but whose files can be reached is built as before."""
  if os.path.isdir(folder) and os.access(folder, os.X_OK):
    return
  why = errno.EACCES if os.path.isdir(folder) else errno.ENOENT
  raise FolderError(
      f"captioned_folder: {folder} was removed, renamed or made unreadable during its build "
      f"({os.strerror(why)}); the part built ({read} of {captioned} captioned images) is not "
      "kept. Restore the folder (or set data.folder to where it is now) and build again.")


_ADVICE = {
    "unknown_file": "Check the file names in the captions file: they are relative to the folder, "
                    "and on most Linux disks their case matters (Cat.JPG is not cat.jpg).",
    "closed_folder": "Folders holding captioned images cannot be entered by this user (their "
                     "modes: copied with another owner's); let it in, e.g. chmod -R a+rX FOLDER.",
    "outside_folder": "The captions file names files outside the folder; move them into it (or, "
                      "for names of the folder's files written on another machine, "
                      "/home/ann/photos/a.jpg, write them relative to the folder: a.jpg).",
    "broken_link": "Links in the folder point at files that are gone (moved or deleted); link "
                   "them to the images again.",
    "too_large": "Images of more pixels than data.max_pixels (0: PIL's decompression-bomb limit, "
                 "89.5 MP; a 108 MP photo, a panorama) are skipped; to use them, set "
                 "data.max_pixels above their pixel count (train.py "
                 "--config.data.max_pixels=250000000, prepare's --max_pixels=250000000).",
    "unsupported_extension": "The captions name files whose extension is not an image's (those "
                             f"read: {', '.join(sorted(images.IMAGE_EXTENSIONS))}): give images "
                             "their format's extension, and convert other files (.svg, .jxl, a "
                             "camera's raw files) to PNG or JPEG.",
    "invalid_json": "Each line of captions.jsonl must be one JSON object.",
    "missing_key": f"Each caption line needs a file key (one of {FILE_KEYS}) and a caption key "
                   f"(one of {CAPTION_KEYS}).",
    "empty_caption": "Blank captions are skipped; write a caption for each image.",
    "caption_not_text": "Captions must be JSON strings, e.g. \"caption\": \"a red car\" (not a "
                        "number, object or list of them).",
    "invalid_utf8": "Save the captions file as UTF-8.",
    "extra_csv_cells": "Quote the captions that contain commas, or make the caption column last.",
    "unclosed_csv_quote": "A caption in captions.csv opens a quote that is not closed where it "
                          "ends, so the lines after it (to the quote that closes it) were read "
                          "into it, their images then uncaptioned: close it, or write a quote "
                          'inside a caption as two and quote the caption ("a 12"" record").',
    **images.DECODER_FIXES,
}


def _advice(line_skips: Skips, image_skips: Skips, captioned: list[str], folder: str) -> str:
  """What to fix when no example was made: the images if captions named some, else the lines
  (of the captions file that `folder` holds)."""
  if captioned:
    reason = max(set(image_skips.counts) - {"no_caption"}, key=image_skips.counts.get)
    fix = f" {_ADVICE[reason].rstrip('.')}." if reason in _ADVICE else ""
    return (f"None of the captioned images could be read ({reason}, e.g. "
            f"{image_skips.examples[reason][0]}).{fix}")
  if not line_skips.counts:
    csv_only = not os.path.isfile(os.path.join(folder, CAPTION_FILES[0]))
    return ("The captions file names no image. Add a line per image, e.g. " +
            ("a.jpg,a red car (under captions.csv's file,caption header)." if csv_only else
             '{"file": "a.jpg", "caption": "a red car"} (in captions.jsonl).'))
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
